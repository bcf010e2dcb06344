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


def test_agg_batch_with_prompts_on_two_ranks_writes_what_one_process_writes_and_resumes(tmp_path):
    """torchrun, 2 ranks (gloo), --method agg with per-image prompts and 2 images per batch: the same PNGs and
    rows as one process; a rerun of the finished batch translates nothing again."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(4):
        picture(48, 32, seed=k).save(inputs / f"img{k}.png")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("source,source_text,text\n" + "".join(f"img{k}.png,Blob {k},Tiger {k}\n" for k in range(4)))
    flags = ["--prompts", str(prompts), "--images-per-batch", "2", "--samples", "2", *AGG_FLAGS, "--size", "32",
             "--max-long-side", "32"]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    for out, launcher in ((tmp_path / "one", [sys.executable]), (tmp_path / "two", torchrun)):
        proc = subprocess.run([*launcher, "-m", "dsct", "batch", str(inputs), "-o", str(out), *flags], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    def files(folder):
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}

    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert two == one
    rows = [json.loads(line) for line in one["results.jsonl"].splitlines()]
    assert sorted((r["source"], r["seed"]) for r in rows) == [(f"img{k}.png", seed) for k in range(4) for seed in (0, 1)]
    assert sorted((r["source"], r["rank"]) for r in rows) == [(f"img{k}.png", rank) for k in range(4) for rank in (1, 2)]
    assert all(set(r) >= {"loss_gt", "loss_clip"} for r in rows)  # AGG's terms: the L1 to the inversion, CLIP
    again = subprocess.run([sys.executable, "-m", "dsct", "batch", str(inputs), "-o", str(tmp_path / "one"), *flags],
                           cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert files(tmp_path / "one") == one  # nothing done twice, nothing rewritten
