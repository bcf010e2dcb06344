"""``python -m dsct translate|batch --method agg``: the AGG flags come from TranslationConfig (kebab-case),
the preset is AGG's, and a DiffuseIT-only flag under AGG is a one-line error (exit 2)."""

from __future__ import annotations

import json

import pytest

from dsct.cli import main

from helpers import picture

AGG_FLAGS = ["--method", "agg", "--tiny", "--quiet", "--size", "64", "--max-long-side", "64", "--steps", "10",
             "--skip", "5", "--t-edit", "3", "--t-boost", "4"]


def test_help_lists_the_agg_flags(capsys):
    with pytest.raises(SystemExit):
        main(["translate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--method", "--eta-edit", "--eta ", "--eta-boost", "--t-edit", "--t-boost", "--lambda-gt",
                 "--inner-iters", "--inner-lr", "--symmetric", "--no-symmetric"):
        assert flag in out, flag


def test_translate_and_batch_with_agg(tmp_path, capsys):
    src = tmp_path / "in" / "src.png"
    src.parent.mkdir()
    picture(80, 64).save(src)
    assert main(["translate", str(src), "--text", "Black Leopard", "--source-text", "Cat", "-o", str(tmp_path / "a.png"),
                 "--samples", "2", "--lambda-gt", "10", "--eta-edit", "0", *AGG_FLAGS]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2] and {r["seed"] for r in rows} == {0, 1}
    assert set(k for k in rows[0] if k.startswith("loss_")) == {"loss_range", "loss_gt", "loss_clip"}
    assert main(["batch", str(src.parent), "--style", str(src), "-o", str(tmp_path / "out"), *AGG_FLAGS]) == 0
    assert (tmp_path / "out" / "results.jsonl").exists()


def test_a_diffuseit_flag_with_agg_is_a_one_line_error(tmp_path, capsys):
    src = tmp_path / "src.png"
    picture().save(src)
    code = main(["translate", str(src), "--style", str(src), "-o", str(tmp_path / "b.png"), "--resample-repeats", "3",
                 *AGG_FLAGS])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith(
        "resample_repeats=3 is not allowed: 10 (its default) with method='agg': only method='diffuseit' reads it")
