"""``python -m dsct eval`` end to end: a real tiny ``dsct batch`` run, then eval on its folder, with the
real Inception and AlexNet architectures holding seeded random weights (``eval_weights``: the files sit
where torch.hub looks, TORCH_HOME points there) and the tiny random CLIP and DINO (``--tiny``).

The expected numbers come from closed forms: a reference set made of the outputs themselves has the
outputs' means, so SFID and CSFID are 0 whatever the network; an output that is its own source has
LPIPS and structure distance 0. Bad inputs end in one line on stderr and exit status 2.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dsct.cli import main

from eval_weights import install_random_weights
from helpers import picture

pytest.importorskip("pytorch_fid")
pytest.importorskip("lpips")

FAST = ["--tiny", "--quiet", "--size", "32", "--max-long-side", "32", "--steps", "2", "--skip", "1",
        "--resample-repeats", "1", "--divergence-until", "-1", "--no-range-restart"]
CLASSES = {"a.png": "cat", "b.png": "cat", "c.png": "dog", "d.png": "dog"}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return install_random_weights(tmp_path_factory.mktemp("torch")).parents[1]


@pytest.fixture(autouse=True)
def _torch_home(home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(home))


@pytest.fixture(scope="module")
def run(tmp_path_factory, home) -> SimpleNamespace:
    """A text-mode batch of four pictures (prompts file), and its classes file."""
    root = tmp_path_factory.mktemp("evalrun")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    for k, name in enumerate(CLASSES):
        picture(40, 32, seed=k).save(inputs / name)
    prompts = root / "prompts.csv"
    prompts.write_text("source,source_text,text\n" + "".join(f"{n},Cat,{c.title()}\n" for n, c in CLASSES.items()))
    classes = root / "classes.csv"
    classes.write_text("source,class\n" + "".join(f"{n},{c}\n" for n, c in CLASSES.items()))
    assert main(["batch", str(inputs), "--prompts", str(prompts), "-o", str(out), *FAST]) == 0
    return SimpleNamespace(root=root, inputs=inputs, out=out, classes=classes, prompts=prompts)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _reference_of(folder: Path, names: dict[str, str], dest: Path) -> Path:
    """Class sub-folders holding exactly the given images: the reference set is the scored set."""
    for name, label in names.items():
        (dest / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / name, dest / label / name)
    return dest


def test_batch_rows_carry_method_and_request(run):
    rows = _rows(run.out)
    assert len(rows) == 4
    for row in rows:
        assert row["method"] == "diffuseit" and row["source_text"] == "Cat"
        assert row["text"] == CLASSES[row["source"]].title()


def test_eval_of_a_batch_run(run, tmp_path, capsys):
    outputs = {r["output"]: CLASSES[r["source"]] for r in _rows(run.out)}
    ref = _reference_of(run.out, outputs, tmp_path / "ref")
    stats = tmp_path / "stats.pt"
    assert main(["eval", "stats", "--ref", str(ref), "-o", str(stats), "--quiet", "--batch-size", "3"]) == 0
    assert "4 images, 2 classes" in capsys.readouterr().out
    assert main(["eval", str(run.out), "--sources", str(run.inputs), "--classes", str(run.classes), "--stats", str(stats),
                 "--tiny", "--quiet", "--batch-size", "3"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((run.out / "metrics.json").read_text())
    assert summary["outputs"] == 4 and summary["classes"] == 2
    assert summary["outputs_per_class"] == "2" and summary["reference_per_class"] == "2"
    assert summary["sfid"] == pytest.approx(0.0, abs=1e-9) and summary["csfid"] == pytest.approx(0.0, abs=1e-9)
    assert summary["csfid_floor"] > 0
    assert summary["lpips"] > 0 and summary["dino_structure"] > 0  # translated: not the source any more
    assert 0 <= summary["clip_score"] <= 2.5 and -1 <= summary["clip_direction"] <= 1
    with (run.out / "metrics.csv").open() as fh:
        per = list(csv.DictReader(fh))
    assert sorted(r["source"] for r in per) == sorted(CLASSES) and {r["class"] for r in per} == {"cat", "dog"}
    assert all(r["lpips"] and r["clip_score"] and r["clip_direction"] and r["dino_structure"] for r in per)
    assert "SFID" in captured.out and "CSFID" in captured.out and "LPIPS (AlexNet v0.1)" in captured.out
    assert "Traceback" not in captured.err


def test_copy_baseline_scores_zero_against_its_own_reference(run, tmp_path, capsys):
    ref = _reference_of(run.inputs, CLASSES, tmp_path / "ref")
    stats = tmp_path / "src.pt"
    assert main(["eval", "stats", "--ref", str(ref), "-o", str(stats), "--quiet"]) == 0
    out = tmp_path / "copy"
    assert main(["eval", str(run.inputs), "--copy-baseline", "--classes", str(run.classes), "--stats", str(stats),
                 "--prompts", str(run.prompts), "-o", str(out), "--tiny", "--quiet", "--lpips-x100"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["sfid"] == pytest.approx(0.0, abs=1e-9) and summary["csfid"] == pytest.approx(0.0, abs=1e-9)
    assert summary["lpips"] == 0.0 and summary["lpips_scale"] == "x100 (FlexIT)"
    assert summary["dino_structure"] == pytest.approx(0.0, abs=1e-12)
    assert summary["clip_direction"] is not None  # a zero image change: cos of a zero vector is 0
    assert not (run.inputs / "metrics.json").exists()


def test_image_mode_batch_gives_style_metrics(tmp_path, capsys, home):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for k in range(2):
        picture(40, 32, seed=10 + k).save(inputs / f"p{k}.png")
        picture(48, 48, seed=20 + k).save(tmp_path / f"s{k}.png")
    prompts = tmp_path / "styles.csv"
    prompts.write_text("source,style\np0.png,s0.png\np1.png,s1.png\n")
    assert main(["batch", str(inputs), "--prompts", str(prompts), "-o", str(out), *FAST]) == 0
    rows = _rows(out)
    assert {Path(r["style"]).name for r in rows} == {"s0.png", "s1.png"} and {r["method"] for r in rows} == {"diffuseit"}
    art = tmp_path / "art_inception.pth"  # ArtFID's file stands in: the FID Inception's random weights again
    shutil.copy(home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth", art)
    assert main(["eval", str(out), "--sources", str(inputs), "--tiny", "--quiet", "--artfid-inception", str(art),
                 "--lpips-x100"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert -1 <= summary["dino_cls_cosine"] <= 1 and summary["fid_style"] > 0
    # the same weights give the same FID, so ArtFID = (1 + LPIPS on its 0–1 scale)(1 + FID to the styles)
    assert summary["art_fid"] == pytest.approx((1 + summary["lpips"] / 100) * (1 + summary["fid_style"]), rel=1e-9)
    assert "no --stats" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("no_results", "no results.jsonl in"),
    ("not_an_image", "cannot evaluate it"),
    ("unknown_class_entry", "names 1 image(s) that are not outputs or sources here: zebra.png"),
    ("no_weights", "pt_inception-2015-12-05-6726825d.pth is not in"),
    ("copy_without_output", "--copy-baseline scores the source folder itself"),
    ("bad_stats", "cannot read the statistics file"),
    ("no_gpu", "--device cuda:7: no CUDA GPU is available here"),
])
def test_bad_input_is_one_line(case, message, run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(run.out, out)
    argv = ["eval", str(out), "--quiet", "--tiny", "--metrics", "fid"]
    if case == "no_results":
        (out / "results.jsonl").unlink()
    elif case == "not_an_image":
        (out / _rows(out)[0]["output"]).write_bytes(b"not a png")
    elif case == "unknown_class_entry":
        classes = tmp_path / "classes.csv"
        classes.write_text(run.classes.read_text() + "zebra.png,dog\n")
        argv += ["--sources", str(run.inputs), "--classes", str(classes)]
    elif case == "no_weights":
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    elif case == "copy_without_output":
        argv = ["eval", str(run.inputs), "--copy-baseline"]
    elif case == "no_gpu":
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
        argv += ["--device", "cuda:7"]
    elif case == "bad_stats":
        (tmp_path / "s.pt").write_bytes(b"junk")
        argv += ["--stats", str(tmp_path / "s.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_source_that_failed_in_the_batch_is_left_out_not_refused(run, tmp_path, capsys):
    """A classes file for the whole benchmark names every source; one that failed in the batch (an error
    row, no output) is left out with a note, not taken for a classes file of another run."""
    out = tmp_path / "out"
    shutil.copytree(run.out, out)
    with (out / "results.jsonl").open("a") as fh:
        fh.write(json.dumps({"source": "e.png", "error": "cannot read e.png"}) + "\n")
    classes = tmp_path / "classes.csv"
    classes.write_text(run.classes.read_text() + "e.png,dog\n")
    assert main(["eval", str(out), "--quiet", "--tiny", "--metrics", "fid", "--classes", str(classes)]) == 0
    assert "1 source(s) recorded as errors have no output and are left out" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["outputs"] == 4


def _fid_by_class(run, labels: dict[str, str], tmp_path) -> dict:
    """Statistics of a reference made of the outputs under ``labels``, then eval's FID metrics by those classes."""
    ref = _reference_of(run.out, labels, tmp_path / "ref")
    stats, classes = tmp_path / "stats.pt", tmp_path / "classes.csv"
    assert main(["eval", "stats", "--ref", str(ref), "-o", str(stats), "--quiet"]) == 0
    classes.write_text("output,class\n" + "".join(f"{o},{c}\n" for o, c in labels.items()))
    assert main(["eval", str(run.out), "--classes", str(classes), "--stats", str(stats), "-o", str(tmp_path / "m"),
                 "--quiet", "--metrics", "fid"]) == 0
    return json.loads((tmp_path / "m" / "metrics.json").read_text())


def test_one_output_per_class_leaves_csfid_undefined(run, tmp_path, capsys):
    summary = _fid_by_class(run, {r["output"]: r["source"][0] for r in _rows(run.out)}, tmp_path)  # one class each
    assert "csfid" not in summary and summary["outputs_per_class"] == "1"
    assert "CSFID is undefined with one output per class" in capsys.readouterr().err


def test_classes_with_one_output_are_named_beside_csfid(run, tmp_path, capsys):
    """Two outputs of "cat", one each of "dog" and "bird": CSFID over the three, a note that two of them
    have one output and so no part in the sampling floor."""
    summary = _fid_by_class(run, dict(zip(sorted(r["output"] for r in _rows(run.out)), ("cat", "cat", "dog", "bird"))),
                            tmp_path)
    assert summary["classes"] == 3 and summary["csfid"] == pytest.approx(0.0, abs=1e-9)
    assert "2 of 3 classes have one output" in capsys.readouterr().err


def test_flexit_queries_become_prompts_classes_and_linked_sources(tmp_path, capsys):
    val = tmp_path / "val"
    for wnid, image in (("n02091032", "ILSVRC2012_val_00042240.JPEG"), ("n02088364", "ILSVRC2012_val_00048167.JPEG")):
        (val / wnid).mkdir(parents=True)
        picture(seed=1).save(val / wnid / image, format="JPEG")
    queries = tmp_path / "queries.csv"
    queries.write_text(",path,source,source_id,target,target_id,is_test\n"
                       "3741,n02091032/ILSVRC2012_val_00042240.JPEG,Italian greyhound,171,Afghan hound,160,True\n"
                       "3646,n02088364/ILSVRC2012_val_00048167.JPEG,beagle,162,Afghan hound,160,False\n")
    bench = tmp_path / "bench"
    assert main(["eval", "flexit", "--queries", str(queries), "--imagenet-val", str(val), "-o", str(bench)]) == 0
    # a query's id is its row position in the file (FlexIT's pandas index, its outputs' names), not the first column
    assert (bench / "prompts.csv").read_text() == "source,source_text,text\n0.JPEG,Italian greyhound,Afghan hound\n"
    assert (bench / "classes.csv").read_text() == "source,class\n0.JPEG,160\n"
    assert (bench / "sources" / "0.JPEG").read_bytes() == (val / "n02091032" / "ILSVRC2012_val_00042240.JPEG").read_bytes()
    assert main(["eval", "flexit", "--queries", str(queries), "--imagenet-val", str(val), "-o", str(tmp_path / "dev"),
                 "--split", "dev"]) == 0
    assert (tmp_path / "dev" / "classes.csv").read_text() == "source,class\n1.JPEG,160\n"  # the second row: id 1
    assert main(["eval", "flexit", "--queries", str(queries), "--imagenet-val", str(val), "-o", str(tmp_path / "b2"),
                 "--split", "all"]) == 0
    assert len((tmp_path / "b2" / "classes.csv").read_text().splitlines()) == 3
    assert main(["eval", "flexit", "--queries", str(queries), "--imagenet-val", str(tmp_path), "-o", str(tmp_path / "b3")]) == 2
    assert "not found: --imagenet-val must be the ImageNet validation folder" in capsys.readouterr().err


def test_batch_points_flexits_queries_file_to_the_converter(tmp_path, capsys):
    queries = tmp_path / "queries.csv"
    queries.write_text(",path,source,source_id,target,target_id,is_test\n1,n1/a.JPEG,beagle,162,Afghan hound,160,True\n")
    (tmp_path / "in").mkdir()
    assert main(["batch", str(tmp_path / "in"), "--prompts", str(queries), "-o", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "is FlexIT's queries.csv" in err and "python -m dsct eval flexit --queries" in err


def test_best_only_scores_rank_one_alone(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    picture(40, 32, seed=4).save(inputs / "p.png")
    picture(48, 48, seed=5).save(tmp_path / "s.png")
    assert main(["batch", str(inputs), "--style", str(tmp_path / "s.png"), "-o", str(out), "--samples", "2", *FAST]) == 0
    for extra, expected in (([], 2), (["--best-only"], 1)):
        assert main(["eval", str(out), "--quiet", "--metrics", "fid", *extra]) == 0
        assert json.loads((out / "metrics.json").read_text())["outputs"] == expected


def test_classes_by_source_name_need_no_sources_folder(run, tmp_path):
    outputs = {r["output"]: CLASSES[r["source"]] for r in _rows(run.out)}
    stats = tmp_path / "stats.pt"
    assert main(["eval", "stats", "--ref", str(_reference_of(run.out, outputs, tmp_path / "ref")), "-o", str(stats), "--quiet"]) == 0
    assert main(["eval", str(run.out), "--classes", str(run.classes), "--stats", str(stats), "-o", str(tmp_path / "m"),
                 "--quiet", "--metrics", "fid"]) == 0
    summary = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert summary["classes"] == 2 and summary["csfid"] == pytest.approx(0.0, abs=1e-9)


def test_statistics_of_another_width_are_refused(run, tmp_path, capsys):
    path = tmp_path / "narrow.pt"
    torch.save({"mean": torch.zeros(768), "std": torch.ones(768), "classwise": {0: {"mean": torch.zeros(768)}}}, path)
    assert main(["eval", str(run.out), "--stats", str(path), "-o", str(tmp_path / "m"), "--quiet", "--metrics", "fid"]) == 2
    err = capsys.readouterr().err
    assert "768 features per image, the outputs 2048" in err and "Traceback" not in err


def test_dsct_and_the_cli_import_without_the_eval_extra():
    """The Space and translate/batch never need pytorch-fid or lpips: blocked, dsct still imports and
    `eval` still shows its help; only a metric that needs them asks for the extra."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['pytorch_fid'] = None; sys.modules['lpips'] = None\n"
            "import dsct, dsct.cli, dsct.evaluate\n"
            "assert 'pytorch_fid.inception' not in sys.modules\n"
            "try:\n    dsct.cli.main(['eval', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "import torch\n"
            "try:\n    dsct.evaluate.load_inception(torch.device('cpu'))\n"
            "except dsct.DSCTError as e:\n    print('ERR', e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ERR dsct eval needs the pytorch-fid package: pip install -r requirements-eval.txt" in result.stdout


def test_rows_of_an_older_batch_are_scored_with_a_note(run, tmp_path, capsys):
    out = tmp_path / "old"
    shutil.copytree(run.out, out)
    keep = ("source", "output", "rank", "seed")
    (out / "results.jsonl").write_text("".join(json.dumps({k: r[k] for k in keep}) + "\n" for r in _rows(run.out)))
    assert main(["eval", str(out), "--sources", str(run.inputs), "--tiny", "--quiet", "--metrics", "fid", "clip"]) == 0
    assert "records no texts or style images" in capsys.readouterr().err
    assert "clip_score" not in json.loads((out / "metrics.json").read_text())
