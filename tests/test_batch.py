"""``python -m dsct batch`` is crash-safe: damaged logs, odd inputs, interrupts, kills, reruns.

One finished run (module fixture) is the reference; each test copies it, damages or reruns it, and
checks the message and the final files. Tiny models are deterministic on the CPU, so a redone
image has the same bytes as the reference's.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from dsct import hub
from dsct.batch import LogProblem, parse_log, plan_resume
from dsct.cli import main

from helpers import picture

REPO = Path(__file__).resolve().parents[1]
# one guided evaluation per image at 32×32, style mode (no CLIP): the cheapest real translation
FAST = ["--tiny", "--quiet", "--size", "32", "--max-long-side", "32", "--steps", "2", "--skip", "1",
        "--resample-repeats", "1", "--divergence-until", "-1", "--no-range-restart"]
OUTPUTS = ["img0-1.png", "img1-1.png"]


def _batch_argv(inputs: Path, out: Path, style: Path, *extra: str) -> list[str]:
    return ["batch", str(inputs), "--style", str(style), "-o", str(out), *FAST, *extra]


def _rows(out: Path) -> list[dict]:
    """Every line of the log parsed (a broken line fails here), sorted so reruns compare by content."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: (r["source"], r.get("rank", 0)))


def _visible_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> SimpleNamespace:
    """An uninterrupted batch over two pictures, an unreadable file, a folder and a broken link."""
    root = tmp_path_factory.mktemp("finished")
    inputs, out, style = root / "in", root / "out", root / "style.png"
    inputs.mkdir()
    for k in range(2):
        picture(seed=k).save(inputs / f"img{k}.png")
    (inputs / "broken.png").write_bytes(b"not a png")
    (inputs / "sub.png").mkdir()  # a folder named like an image
    (inputs / "gone.png").symlink_to(root / "nowhere.png")  # a dangling link
    picture(seed=9).save(style)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # with its progress line (test_progress_line_counts_images_and_errors)
        rc = main([a for a in _batch_argv(inputs, out, style) if a != "--quiet"])
    return SimpleNamespace(root=root, inputs=inputs, out=out, style=style, rc=rc, err=err.getvalue(),
                           files=_visible_files(out) if out.is_dir() else {})


@pytest.fixture
def copy(finished, tmp_path) -> SimpleNamespace:
    """A private copy of the finished run's outputs, on the same inputs (error rows name their path)."""
    assert finished.rc == 0, finished.err
    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    return SimpleNamespace(out=out, argv=_batch_argv(finished.inputs, out, finished.style))


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if anything loads the models."""
    def refuse(*args, **kwargs):
        raise AssertionError("the models were loaded")
    monkeypatch.setattr(hub, "load_models", refuse)


def test_folder_and_broken_link_inputs_become_error_rows(finished):
    assert finished.rc == 0, finished.err
    errors = {r["source"]: r["error"] for r in _rows(finished.out) if "error" in r}
    assert set(errors) == {"broken.png", "sub.png", "gone.png"}
    assert "is a folder, not an image file" in errors["sub.png"]
    assert "is a broken link" in errors["gone.png"]
    assert "cannot read" in errors["broken.png"]
    assert all(name in finished.files for name in OUTPUTS)  # the other images were translated


def test_progress_line_counts_images_and_errors(finished):
    assert finished.rc == 0, finished.err
    # by hand: five sources (img0, img1 and three unusable ones), each unusable one named once
    states = re.findall(r"images: +\d+%\|[^|]*\| (\d+)/(\d+) \[[^\]]*errors=(\d+)\]", finished.err)
    assert states and states[-1] == ("5", "5", "3"), finished.err[-2000:]
    lines = finished.err.replace("\r", "\n").splitlines()
    assert sorted(line.split(":")[0] for line in lines if line.startswith("skipped ")) == \
        ["skipped broken.png", "skipped gone.png", "skipped sub.png"]


def _cut_row_of(source: str):
    def damage(out: Path) -> None:  # killed while writing this row: half of it ends the log
        log = out / "results.jsonl"
        lines = log.read_bytes().splitlines(keepends=True)
        k = next(k for k, line in enumerate(lines) if json.loads(line)["source"] == source)
        log.write_bytes(b"".join(lines[:k]) + lines[k][:40])
    return damage


def _drop_rank_of(source: str):
    def damage(out: Path) -> None:
        log = out / "results.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        for row in rows:
            if row["source"] == source:
                del row["rank"]
        log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return damage


@pytest.mark.parametrize(
    "damage, deleted, line",
    [
        (_cut_row_of("img1.png"), "img1-1.png", 4),  # killed while saving img1 (its PNG not renamed yet)
        (_cut_row_of("img1.png"), None, 4),  # killed while writing img1's row, its PNG already in place
        (_drop_rank_of("img0.png"), None, 3),  # a row with a field missing
    ],
    ids=["cut-row-no-png", "cut-row-png-kept", "missing-field"],
)
def test_damaged_log_line_is_reported_and_its_image_redone(finished, copy, capsys, damage, deleted, line):
    damage(copy.out)
    if deleted:
        (copy.out / deleted).unlink()
    assert main(copy.argv) == 0
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1 and f"dropped line {line} " in warnings[0]
    assert _rows(copy.out) == _rows(finished.out)  # the broken line is gone, the good rows kept, one redone
    assert {k: v for k, v in _visible_files(copy.out).items() if k.endswith(".png")} == \
        {k: v for k, v in finished.files.items() if k.endswith(".png")}


def test_redone_source_replaces_its_rows(finished, copy, capsys):
    (copy.out / "img0-1.png").unlink()
    assert main(copy.argv) == 0
    assert "1 to translate in" in capsys.readouterr().err
    assert _rows(copy.out) == _rows(finished.out)  # one row per source, not two for img0
    with (copy.out / "results.csv").open(newline="") as fh:
        assert sorted(r["source"] for r in csv.DictReader(fh)) == ["broken.png", "gone.png", "img0.png", "img1.png", "sub.png"]
    assert (copy.out / "img0-1.png").read_bytes() == finished.files["img0-1.png"]


def test_errors_are_counted_apart_and_retried_only_when_asked(finished, copy, tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "in"
    shutil.copytree(finished.inputs, inputs, symlinks=True)
    argv = _batch_argv(inputs, copy.out, finished.style)
    with monkeypatch.context() as m:
        m.setattr(hub, "load_models", lambda *a, **k: pytest.fail("nothing to do, yet the models were loaded"))
        assert main(argv) == 0
        assert "nothing to do" in (err := capsys.readouterr().err)
        assert "already 2 translated, 3 recorded as error (use --retry-errors)" in err
        picture(seed=4).save(inputs / "broken.png")  # fixed by the user
        assert main(argv) == 0  # not retried without the flag
        assert "3 recorded as error" in capsys.readouterr().err
    assert main([*argv, "--retry-errors"]) == 0
    rows = {r["source"]: r for r in _rows(copy.out)}
    assert "error" not in rows["broken.png"] and rows["broken.png"]["output"] == "broken-1.png"
    assert (copy.out / "broken-1.png").is_file()
    assert [r["source"] for r in _rows(copy.out)].count("broken.png") == 1
    assert "is a folder" in rows["sub.png"]["error"]  # still unusable: recorded again


def test_interrupted_png_save_leaves_no_partial_file(finished, tmp_path, monkeypatch):
    real_save = Image.Image.save

    def cut_short(self, fp, format=None, **kwargs):  # writes half the PNG, then Ctrl-C
        buf = io.BytesIO()
        real_save(self, buf, format=format or "PNG")
        half = buf.getvalue()[: len(buf.getvalue()) // 2]
        if isinstance(fp, (str, os.PathLike)):
            Path(fp).write_bytes(half)
        else:
            fp.write(half)
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", cut_short)
    out = tmp_path / "out"
    assert main(_batch_argv(finished.inputs, out, finished.style)) == 130
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl"]  # no PNG, no temporary left behind


def _interrupt_after_one_row(monkeypatch, owner: object, name: str) -> None:
    """Ctrl-C in the middle of a file: ``owner.name`` (called once per line) works once, then raises."""
    real, calls = getattr(owner, name), []

    def once(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, once)


@pytest.mark.parametrize(
    "table, owner, name",
    [("results.csv", csv.DictWriter, "_dict_to_list"), ("results.jsonl", json, "dumps")],  # header, first row
    ids=["csv", "jsonl"],
)
def test_interrupted_rewrite_keeps_the_old_file(copy, monkeypatch, table, owner, name):
    log = copy.out / "results.jsonl"
    log.write_bytes(log.read_bytes() + b'{"source": "img')  # a broken line, so the resumed run rewrites the log
    before = (copy.out / table).read_bytes()
    _interrupt_after_one_row(monkeypatch, owner, name)
    assert main(copy.argv) == 130
    assert (copy.out / table).read_bytes() == before
    assert not [p for p in copy.out.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_killed_run_resumes_to_the_same_files(finished, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "dsct", *_batch_argv(finished.inputs, out, finished.style)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300

    def first_done() -> bool:  # its PNG in place and its row logged (the PNG alone may still be redone)
        log = out / "results.jsonl"
        lines = log.read_text().split("\n")[:-1] if log.exists() else []  # complete lines only
        return (out / OUTPUTS[0]).exists() and any(f'"{OUTPUTS[0]}"' in line for line in lines)

    while not first_done():  # the first output is in place: kill it in the middle of the next
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no output appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    proc.stderr.close()
    first = (out / OUTPUTS[0]).stat().st_ino
    assert main(_batch_argv(finished.inputs, out, finished.style)) == 0
    assert _rows(out) == _rows(finished.out)
    assert (out / OUTPUTS[0]).stat().st_ino == first  # resumed: the image done before the kill was not redone
    resumed, reference = _visible_files(out), finished.files
    assert {k: v for k, v in resumed.items() if k.endswith(".png")} == {k: v for k, v in reference.items() if k.endswith(".png")}
    assert sorted(resumed["results.csv"].splitlines()) == sorted(reference["results.csv"].splitlines())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["translate", "adir", "--style", "src.png", "-o", "o.png"], "source image: adir is a folder, not an image file"),
        (["translate", "src.png", "--style", "adir", "-o", "o.png"], "style image: adir is a folder, not an image file"),
        (["translate", "bad.png", "--text", "T", "--source-text", "S", "-o", "o.png"], "cannot read bad.png"),
        (["translate", "src.png", "--text", "  ", "--source-text", "S", "-o", "o.png"], "text='' is not allowed"),
        (["translate", "src.png", "--style", "src.png", "-o", "o.xyz"], "cannot write o.xyz"),
        (["translate", "src.png", "--style", "src.png", "-o", "src.png/o.png"], "src.png is a file, not a folder"),
        (["batch", "in", "--text", "T", "--source-text", " ", "-o", "out"], "source_text='' is not allowed"),
        (["batch", "in", "--style", "bad.png", "-o", "out"], "style image: cannot read bad.png"),
        (["batch", "in", "--style", "gone.png", "-o", "out"], "style image: gone.png is a broken link"),
        (["batch", "src.png", "--style", "src.png", "-o", "out"], "src.png is a file, not a folder of images"),
    ],
)
def test_inputs_are_checked_before_the_models_load(argv, message, tmp_path, capsys, monkeypatch, no_models):
    monkeypatch.chdir(tmp_path)
    picture().save(tmp_path / "src.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG cut")
    (tmp_path / "adir").mkdir()
    (tmp_path / "in").mkdir()
    picture().save(tmp_path / "in" / "a.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert main([*argv, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()  # nothing written either


def test_parse_log_keeps_good_rows_and_names_the_bad_lines():
    good = {"source": "a.png", "output": "a-1.png", "rank": 1}
    lines = [json.dumps(good).encode(), b"", b'{"source": "b.png", "output": "b-', b'{"source": "c.png", "output": "c-1.png"}',
             b"[1, 2]", b"\xff\xfe"]
    rows, problems = parse_log(lines)
    assert rows == [good]
    assert [(p.line, p.source) for p in problems] == [(3, "b.png"), (4, "c.png"), (5, None), (6, None)]
    assert "rank" in problems[1].reason


def test_plan_resume_redoes_incomplete_and_suspect_sources():
    def row(source: str, rank: int) -> dict:
        return {"source": source, "output": f"{source}-{rank}.png", "rank": rank}

    old = [row("a", 1), row("a", 2), row("b", 1), row("c", 1), row("c", 2), row("d", 1), row("d", 2), row("d", 1), row("d", 2)]
    errors = [{"source": "e", "output": "", "error": "cannot read e"}]
    present = {r["output"] for r in old} - {"b-2.png"}
    problems = [LogProblem(12, "cut short or not JSON", "c")]
    plan = plan_resume(old + errors, problems, ["a", "b", "c", "d", "e"], present, samples=2)
    assert plan.todo == ["b", "c"]  # b lacks rank 2; c has a broken line
    assert plan.translated == 2 and plan.failed == 1
    assert plan.rows == [row("a", 1), row("a", 2), row("d", 1), row("d", 2), *errors]  # d's older duplicate dropped
    assert plan_resume(errors, [], ["e"], set(), samples=1, retry_errors=True).todo == ["e"]


def _prompts_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_prompts_file_gives_each_image_its_own_texts(finished, tmp_path, capsys, monkeypatch):
    texts = {"img0.png": ("Cat", "Tiger"), "img1.png": ("Dog", "Snow Owl")}
    prompts = _prompts_file(tmp_path / "p.csv", "source,source_text,text\n" + "".join(f"{s},{a},{b}\n" for s, (a, b) in texts.items()))
    out = tmp_path / "out"
    assert main(["batch", str(finished.inputs), "--prompts", str(prompts), "-o", str(out), *FAST]) == 0
    assert "not listed in" in capsys.readouterr().err  # broken.png, sub.png, gone.png: left out, no rows
    assert sorted(r["source"] for r in _rows(out)) == ["img0.png", "img1.png"]
    batch_rows = {r["source"]: {k: v for k, v in r.items() if k != "output"} for r in _rows(out)}
    singles = {}
    for source, (source_text, text) in [*texts.items(), ("img1.png", texts["img0.png"])]:
        single = tmp_path / f"{source}-{text}.png"
        assert main(["translate", str(finished.inputs / source), "--source-text", source_text, "--text", text,
                     "-o", str(single), *FAST]) == 0
        row = json.loads(capsys.readouterr().out)
        singles[source, text] = single.read_bytes(), {k: v for k, v in row.items() if k != "output"}
    assert ((out / "img0-1.png").read_bytes(), batch_rows["img0.png"]) == singles["img0.png", "Tiger"]
    assert ((out / "img1-1.png").read_bytes(), batch_rows["img1.png"]) == singles["img1.png", "Snow Owl"]
    assert singles["img1.png", "Snow Owl"][1] != singles["img1.png", "Tiger"][1]  # the text changes the row: the checks can fail
    monkeypatch.setattr(hub, "load_models", lambda *a, **k: pytest.fail("nothing to do, yet the models were loaded"))
    assert main(["batch", str(finished.inputs), "--prompts", str(prompts), "-o", str(out), *FAST]) == 0
    assert "nothing to do" in capsys.readouterr().err  # resumed: both done


def test_bad_prompt_rows_become_error_rows(finished, tmp_path, capsys, no_models):
    prompts = _prompts_file(tmp_path / "p.csv", "source,style\nmissing.png,style.png\nimg0.png,\n"
                            "img1.png,style.png,extra\n")
    out = tmp_path / "out"
    assert main(["batch", str(finished.inputs), "--prompts", str(prompts), "-o", str(out), *FAST]) == 0  # no model needed
    errors = {r["source"]: r["error"] for r in _rows(out)}
    assert all(r["output"] == "" for r in _rows(out))
    assert "line 2: source image: file not found" in errors["missing.png"]
    assert "line 3: style='' is not allowed" in errors["img0.png"]
    assert "line 4: 3 cells, the header has 2" in errors["img1.png"]
    assert main(["batch", str(finished.inputs), "--prompts", str(prompts), "-o", str(out), *FAST]) == 0
    assert "3 recorded as error" in capsys.readouterr().err


@pytest.mark.parametrize(
    "csv_text, extra, message",
    [
        ("source,text,colour\na.png,T,red\n", [], "unknown column 'colour'"),
        ("source,text\na.png,T\n", [], "missing column source_text"),
        ("source,source_text,text,style\na.png,S,T,s.png\n", [], "mixes text-mode columns"),
        ("source,style\na.png,s.png\na.png,t.png\n", [], "a.png is listed twice (first on line 2)"),
        ("source,style\n,s.png\n", [], "line 2: no source file name"),
        ("source,style\n../a.png,s.png\n", [], "line 2: source '../a.png' is not a file name"),
        ("", [], "empty prompts file"),
        ("source,style\na.png,s.png\n", ["--style", "s.png"], "--prompts gives each source its own prompts: leave out --style"),
        (None, [], "cannot read the prompts file"),
    ],
    ids=["unknown-column", "missing-column", "mixed-modes", "listed-twice", "no-source", "a-path", "empty", "both", "no-file"],
)
def test_bad_prompts_file_is_one_line_before_the_models_load(csv_text, extra, message, tmp_path, capsys, monkeypatch, no_models):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    if csv_text is not None:
        _prompts_file(tmp_path / "p.csv", csv_text)
    assert main(["batch", "in", "--prompts", "p.csv", "-o", "out", *extra, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_batch_needs_flags_or_a_prompts_file(capsys, no_models):
    assert main(["batch", "in", "-o", "out", *FAST]) == 2
    assert capsys.readouterr().err.startswith("error: batch needs --text with --source-text (text mode), --style")
