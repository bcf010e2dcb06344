"""``dsct batch --images-per-batch N``: sources of one working size share a batch, each keeps its own
prompts and seeds, bad sources stay error rows, a batch out of GPU memory is split, and two torchrun
ranks give exactly the files of one process with the same N."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsct import cli
from dsct.batch import size_groups
from dsct.cli import main

from helpers import picture

REPO = Path(__file__).resolve().parents[1]
# 32×32 squares, 32×64 for the wide pictures: two working sizes; one guided evaluation each
FAST = ["--tiny", "--quiet", "--size", "32", "--max-long-side", "64", "--steps", "2", "--skip", "1",
        "--resample-repeats", "1", "--divergence-until", "-1", "--no-range-restart", "--samples", "2"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_size_groups_by_hand():
    sizes = {"a": (32, 32), "b": (64, 32), "c": (32, 32), "d": None, "e": (32, 32), "f": (64, 32), "g": (32, 32)}
    names = list(sizes)
    # squares a c | e g, wides b f, the unreadable d alone; batches in the order of their first source
    assert size_groups(names, sizes, 2) == [["a", "c"], ["b", "f"], ["d"], ["e", "g"]]
    assert size_groups(names, sizes, 3) == [["a", "c", "e"], ["b", "f"], ["d"], ["g"]]
    assert size_groups(names, sizes, 1) == [[n] for n in names]
    assert size_groups([], {}, 4) == []


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("groups")
    inputs = root / "in"
    inputs.mkdir()
    picture(64, 64, seed=0).save(inputs / "a.png")
    picture(128, 64, seed=1).save(inputs / "b.png")  # wide
    picture(64, 64, seed=2).save(inputs / "c.png")
    (inputs / "d.png").write_bytes(b"not a png")
    picture(64, 64, seed=4).save(inputs / "e.png")
    picture(128, 64, seed=5).save(inputs / "f.png")
    picture(64, 64, seed=6).save(inputs / "g.png")
    picture(seed=9).save(root / "style.png")
    return root


def _argv(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["batch", str(folder / "in"), "--style", str(folder / "style.png"), "-o", str(out), *FAST, *extra]


def _run(argv: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 0, err.getvalue()
    return err.getvalue()


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _pngs(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in sorted(out.glob("*.png"))}


@pytest.fixture(scope="module")
def one_by_one(folder) -> Path:
    out = folder / "single"
    _run(_argv(folder, out))
    return out


def test_grouped_batch_gives_each_image_its_own_outputs_in_source_order(folder, one_by_one, monkeypatch):
    sizes: list[list[tuple[int, int]]] = []
    real = cli.translate_many

    def spy(models, jobs, **kw):
        sizes.append([job.source.size for job in jobs])
        return real(models, jobs, **kw)

    monkeypatch.setattr(cli, "translate_many", spy)
    out = folder / "grouped"
    _run(_argv(folder, out, "--images-per-batch", "2"))
    # a c | b f | e g (d cannot be read: its own batch, an error row before any translation)
    assert sizes == [[(64, 64)] * 2, [(128, 64)] * 2, [(64, 64)] * 2]
    got, want = _log(out), _log(one_by_one)
    assert [(r["source"], r.get("rank"), r.get("seed")) for r in got] == [(r["source"], r.get("rank"), r.get("seed")) for r in want]
    assert [r["source"] for r in got if "error" in r] == ["d.png"]
    grouped, single = _pngs(out), _pngs(one_by_one)
    assert grouped.keys() == single.keys() and len(grouped) == 12
    for name in single:  # batch effects only
        assert grouped[name].shape == single[name].shape and np.abs(grouped[name] - single[name]).max() <= 2, name
    assert (out / "results.csv").read_text().count("\n") == len(got) + 1


def test_a_batch_out_of_memory_is_split_down_to_single_images(folder, one_by_one, monkeypatch):
    real = cli.translate_many
    tried: list[int] = []

    def small_gpu(models, jobs, **kw):
        tried.append(len(jobs))
        if len(jobs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(models, jobs, **kw)

    monkeypatch.setattr(cli, "translate_many", small_gpu)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    out = folder / "split"
    err = _run(_argv(folder, out, "--images-per-batch", "3"))
    assert tried == [3, 1, 2, 1, 1, 2, 1, 1, 1]  # a c e → a | c e → c | e; b f → b | f; g
    assert err.count("ran out of GPU memory; splitting it") == 3
    single = {p.name: p.read_bytes() for p in one_by_one.glob("*.png")}
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == single  # one image at a time: the same bytes


@pytest.mark.parametrize("value", ["0", "33"])
def test_images_per_batch_out_of_range_is_one_line(folder, tmp_path, value, capsys):
    assert main(_argv(folder, tmp_path / "out", "--images-per-batch", value)) == 2
    assert f"--images-per-batch {value} is out of range: give 1 to 32" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_two_ranks_give_one_process_files_with_the_same_batches(folder, tmp_path):
    flags = [a for a in _argv(folder, tmp_path / "x", "--images-per-batch", "2")[1:]]
    runs = {}
    for name, launcher in (("one", [sys.executable]),
                           ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])):
        out = tmp_path / name
        argv = [*launcher, "-m", "dsct", "batch", *[str(out) if a == str(tmp_path / "x") else a for a in flags]]
        proc = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, timeout=600)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        runs[name] = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}
    assert runs["one"].keys() == runs["two"].keys() and len([n for n in runs["one"] if n.endswith(".png")]) == 12
    assert runs["one"] == runs["two"]
