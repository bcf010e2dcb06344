"""The command line: help, translate and batch on tiny models, resume, one-line errors, README lines."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dsct.cli import build_parser, main

from helpers import picture

REPO = Path(__file__).resolve().parents[1]
SMALL_FLAGS = ["--tiny", "--quiet", "--size", "64", "--max-long-side", "64", "--steps", "10", "--skip", "5",
               "--resample-repeats", "2", "--divergence-until", "5"]


@pytest.mark.parametrize("command", [[], ["translate"], ["batch"], ["download"], ["eval"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if command in (["translate"], ["batch"]):
        assert "--lambda-ssim" in out and "--no-range-restart" in out and "[1000.0 / 1000.0]" in out


def test_translate_text_and_style(tmp_path, capsys):
    src, style = tmp_path / "src.png", tmp_path / "style.png"
    picture(80, 64).save(src)
    picture(seed=3).save(style)
    out = tmp_path / "out" / "leopard.png"
    assert main(["translate", str(src), "--text", "Black Leopard", "--source-text", "Cat", "-o", str(out),
                 "--samples", "2", *SMALL_FLAGS]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2] and {r["seed"] for r in rows} == {0, 1}
    assert Image.open(out).size == (64, 64) and (tmp_path / "out" / "leopard-2.png").exists()
    assert main(["translate", str(src), "--style", str(style), "-o", str(tmp_path / "s.png"), "--seed", "7", *SMALL_FLAGS]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 7


def test_batch_writes_results_and_resumes(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(2):
        picture(seed=k).save(inputs / f"img{k}.png")
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "broken.png").write_bytes(b"not a png")  # unusable: recorded and skipped, the batch goes on
    picture(seed=7).save(inputs / "img0.jpg")  # same stem as img0.png: both outputs kept
    out = tmp_path / "out"
    args = ["batch", str(inputs), "--text", "Tiger", "--source-text", "Cat", "-o", str(out), *SMALL_FLAGS]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in rows) == ["broken.png", "img0.jpg", "img0.png", "img1.png"]
    assert "cannot read" in next(r["error"] for r in rows if r["source"] == "broken.png")
    assert (out / "img0.png-1.png").exists() and (out / "img0.jpg-1.png").exists() and (out / "img1-1.png").exists()
    assert (out / "results.csv").read_text().startswith("class_label,content_score")
    picture(seed=5).save(inputs / "img2.png")
    capsys.readouterr()
    assert main(args) == 0  # resumes: only the new image is translated
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows].count("img0.png") == 1 and [r["source"] for r in rows].count("broken.png") == 1
    assert len(rows) == 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["translate", "missing.png", "--text", "T", "--source-text", "S", "-o", "o.png", "--tiny"], "not found"),
        (["translate", "src.png", "--text", "T", "-o", "o.png", "--tiny"], "--source-text is required"),
        (["translate", "src.png", "--text", "T", "--source-text", "S", "-o", "o.png", "--tiny", "--skip", "500"], "skip=500"),
        (["translate", "src.png", "--text", "T", "--source-text", "S", "-o", "o.png", "--tiny", "--lambda-clip", "-1"], "lambda_clip"),
        (["translate", "src.png", "--text", "T", "--source-text", "S", "-o", "o.png", "--device", "cuda:0"], "no CUDA GPU"),
        (["translate", "src.png", "--text", "T", "--source-text", "S", "-o", "o.png", "--device", "tpu9"], "not a device name"),
        (["translate", "src.png", "--text", "T", "--source-text", "S", "-o", "o.xyz", "--tiny", "--size", "64",
          "--max-long-side", "64", "--steps", "4", "--skip", "1", "--quiet"], "cannot write"),
        (["batch", "no-such-dir", "--text", "T", "--source-text", "S", "-o", "out", "--tiny"], "input folder not found"),
    ],
)
def test_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    picture().save(tmp_path / "src.png")
    if "cuda:0" in argv:
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and message in err[-1] and err[-1].startswith("error: ")


def test_parser_flags_cover_every_setting():
    from dataclasses import fields

    from dsct.config import TranslationConfig

    help_text = build_parser()._subparsers._group_actions[0].choices["translate"].format_help()
    for f in fields(TranslationConfig):
        if f.name != "mode":
            assert "--" + f.name.replace("_", "-") in help_text


def _readme_tiny_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines()
            if line.startswith("python -m dsct") and "--tiny" in line]


@pytest.mark.parametrize("command", _readme_tiny_commands())
def test_readme_tiny_commands_work_as_written(command, tmp_path):
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "dsct"]
    (tmp_path / "examples").symlink_to(REPO / "examples")  # run as written, from a checkout-like folder
    result = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    outputs = [argv[k + 1] for k, a in enumerate(argv) if a in ("-o", "--output")]
    assert outputs
    for out in outputs:
        assert Image.open(tmp_path / out).mode == "RGB"
