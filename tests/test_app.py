"""app.py end to end on the tiny models: both endpoints through gradio_client, streamed previews,
progress, every error as an AppError with its message, Stop, ZeroGPU budgeting, and startup
without weights."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from dsct import PRESETS, TranslationConfig
from dsct.images import output_size

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import app  # noqa: E402 — app.py lives at the repository root, beside dsct/

# gradio's queue (pandas 3) warns on every event; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

CAT, HUBBLE = REPO / "examples" / "cat.png", REPO / "examples" / "hubble.png"
# A few guided steps on small images: each call takes about a second on 2 CPU cores.
SMALL = dict(steps=10, skip=5, divergence_until=2, resample_repeats=2, size=64, max_long_side=96, range_restart=False)
CAPTION = re.compile(r"^#(\d+) · seed (\d+) · content -?\d+\.\d{3} · target -?\d+\.\d{3}"
                     r" · tiny model: not meaningful$")


@pytest.fixture(scope="module")
def models():
    return app.get_models(["imagenet", "ffhq"], tiny=True)


@pytest.fixture(scope="module")
def client(models):
    demo = app.build_demo(models, defaults=SMALL)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.LAUNCH_KWARGS)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


def _expected_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return output_size(*im.size, size=SMALL["size"], max_long_side=SMALL["max_long_side"], resize_mode="resize")


def _check_gallery(gallery: list[dict], *, seeds: set[int], size: tuple[int, int]) -> None:
    assert [int(CAPTION.match(item["caption"]).group(1)) for item in gallery] == list(range(1, len(seeds) + 1))
    assert {int(CAPTION.match(item["caption"]).group(2)) for item in gallery} == seeds
    for item in gallery:
        with Image.open(item["image"]) as im:
            assert (im.format, im.size, im.mode) == ("PNG", size, "RGB")


def test_endpoints_and_parameters(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(api) == {"/translate_text", "/translate_image"}
    exposed = set()
    for mode in ("text", "image"):
        names = [p["parameter_name"] for p in api[f"/translate_{mode}"]["parameters"]]
        assert names == app.handler_inputs(mode)
        exposed |= set(names)
    assert {f.name for f in dataclasses.fields(TranslationConfig)} - exposed == {"mode"}


def test_translate_text(client):
    gallery, previews = client.predict(handle_file(CAT), "Cat", "Black Leopard", samples=2, seed=7,
                                       api_name="/translate_text")
    _check_gallery(gallery, seeds={7, 8}, size=_expected_size(CAT))
    assert previews == []  # cleared once the results arrive


def test_translate_image_faces_streams_previews(client):
    job = client.submit(handle_file(CAT), handle_file(HUBBLE), generator="ffhq", colour_match=True, seed=3,
                        api_name="/translate_image")
    gallery, _ = job.result(timeout=120)
    _check_gallery(gallery, seeds={3}, size=_expected_size(CAT))
    streamed = [previews for _, previews in job.outputs()[:-1] if isinstance(previews, list)]
    assert streamed, "no x̂0 preview was streamed"
    total = SMALL["steps"] - SMALL["skip"] - 1 + SMALL["resample_repeats"]
    assert streamed[0][0]["caption"] == f"sample 1 · step 1/{total}"
    with Image.open(streamed[0][0]["image"]) as im:
        assert im.size == (96, 64)  # the working size: x̂0 as the sampler sees it


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(steps=5000), "steps=5000 is not allowed"),
    (dict(skip=10), "skip=10 is not allowed: fewer than steps (10)"),
    (dict(lambda_ssim=-1), "lambda_ssim=-1 is not allowed"),
    (dict(seed=1.5), "seed=1.5 is not allowed: an integer"),
    (dict(text="  "), "text='' is not allowed: a non-empty description"),
    (dict(source_text=""), "source_text='' is not allowed"),
    (dict(source=None), "no source image was given"),
    (dict(source="not-an-image"), "source image: the upload is not a readable image"),
    (dict(generator="sd15"), "'sd15'"),
])
def test_bad_input_is_an_app_error_with_the_message(client, overrides, message, tmp_path):
    if overrides.get("source") == "not-an-image":
        bogus = tmp_path / "notes.png"
        bogus.write_text("not a picture")
        overrides = dict(source=handle_file(bogus))
    kwargs = dict(source=handle_file(CAT), source_text="Cat", text="Black Leopard") | overrides
    with pytest.raises(AppError) as info:
        client.predict(**kwargs, api_name="/translate_text")
    assert message in str(info.value)


def test_style_image_is_required(client):
    with pytest.raises(AppError, match="needs a style image"):
        client.predict(handle_file(CAT), None, api_name="/translate_image")


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dsct-translate"]


def test_stop_cancels_the_sampler(client):
    job = client.submit(handle_file(CAT), "Cat", "Black Leopard", steps=1000, skip=0, resample_repeats=1,
                        api_name="/translate_text")
    deadline = time.monotonic() + 60
    while not any(isinstance(p, list) for _, p in job.outputs()):  # the first preview: sampling runs
        assert time.monotonic() < deadline and not job.done(), "the long job never streamed a preview"
        time.sleep(0.05)
    assert _sampler_threads()
    job.cancel()
    deadline = time.monotonic() + 30
    while _sampler_threads():
        assert time.monotonic() < deadline, "the sampler kept running after Stop"
        time.sleep(0.1)
    gallery, _ = client.predict(handle_file(CAT), "Cat", "Black Leopard", api_name="/translate_text")
    assert len(gallery) == 1  # the queue is free again


def test_progress_counts_steps(models):
    calls = []
    settings = dict(SMALL, samples=1, seed=0, resample_repeats=3)
    updates = list(app._stream("text", "imagenet", str(CAT), None, "Black Leopard", "Cat", settings,
                               lambda p, **kw: calls.append((p, kw["unit"]))))
    total = SMALL["steps"] - SMALL["skip"] - 1 + 3
    assert calls == [((k, total), "steps") for k in range(1, total + 1)]
    assert isinstance(updates[-1], app.Done) and len(updates[-1].results) == 1


def test_gpu_seconds_follow_the_work_and_the_measurement(monkeypatch):
    base = TranslationConfig(steps=50, skip=20, resample_repeats=4)
    args = ("imagenet", "src.png", None, "t", "s")
    seconds = app.gpu_seconds(*args, base)
    for more in (dict(steps=100, skip=20), dict(samples=4), dict(resample_repeats=10), dict(max_long_side=512)):
        assert app.gpu_seconds(*args, dataclasses.replace(base, **more)) > seconds
    # measured: 0.1 s per evaluation of 4 samples at 256 x 448; a single sample is not assumed faster
    monkeypatch.setitem(app._MEASURED_SPEED, ("imagenet", "text"), app.Speed(0.1, 4, 256 * 448))
    evaluations = base.t_start + base.resample_repeats
    expected = app.GPU_START_S + app.RESTART_MARGIN * 0.1 * evaluations
    four, eight = dataclasses.replace(base, samples=4), dataclasses.replace(base, samples=8)
    assert app.gpu_seconds(*args, base) == app.gpu_seconds(*args, four) == math.ceil(expected)
    assert app.gpu_seconds(*args, eight) == math.ceil(expected + app.RESTART_MARGIN * 0.1 * evaluations)


def test_zero_gpu_budget_is_checked_before_the_gpu_is_asked(client, monkeypatch):
    monkeypatch.setattr(app, "ON_ZERO_GPU", True)
    with pytest.raises(AppError, match=r"needs about \d+ s of GPU time and ZeroGPU allows 300 s"):
        client.predict(handle_file(CAT), "Cat", "Black Leopard", steps=1000, skip=0, samples=16,
                       api_name="/translate_text")


def _component(demo: gr.Blocks, label: str) -> dict:
    return next(c["props"] for c in demo.config["components"] if c["props"].get("label") == label)


def _banners(demo: gr.Blocks) -> list[str]:
    return [c["props"]["value"] for c in demo.config["components"]
            if "dsct-banner" in (c["props"].get("elem_classes") or [])]


def test_cpu_defaults_to_the_fast_preset_and_warns(models):
    on_cpu = {g: dataclasses.replace(m, config=dataclasses.replace(m.config, tiny=False))  # real models' flags
              for g, m in models.items()}
    try:
        demo = app.build_demo(on_cpu)
        assert _component(demo, "steps")["value"] == PRESETS["text-fast"].steps
        banners = _banners(demo)
        assert len(banners) == 1 and "25 s" in banners[0] and "fast preset" in banners[0]
    finally:
        app.build_demo(models, defaults=SMALL)  # the module's server reads the registry: put the tiny models back


def test_tiny_models_show_a_banner(models):
    demo = app.build_demo(models, defaults=SMALL)
    banners = _banners(demo)
    assert len(banners) == 1 and "not** a meaningful picture" in banners[0]


def test_tiny_flag_from_the_environment(monkeypatch):
    monkeypatch.setenv("DSCT_TINY", "1")
    assert app.parse_args([]).tiny
    monkeypatch.delenv("DSCT_TINY")
    assert not app.parse_args([]).tiny and app.parse_args(["--tiny"]).tiny


def test_examples_are_shipped():
    for row in app.TEXT_EXAMPLES + app.STYLE_EXAMPLES:
        assert (app.EXAMPLES / row[0]).is_file()
    for row in app.STYLE_EXAMPLES:
        assert (app.EXAMPLES / row[1]).is_file()


def test_startup_without_weights_says_what_to_do(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    env = {k: v for k, v in env.items() if not k.startswith("DSCT_")}
    proc = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for hint in ("diffusion_openai.pt", "python -m dsct download", "DSCT_ADM_IMAGENET256_PATH", "--tiny"):
        assert hint in proc.stderr
