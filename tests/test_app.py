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
from gradio_client import handle_file
from gradio_client.exceptions import AppError, ValidationError
from PIL import Image

from dsct import PRESETS, TranslationConfig, preset
from dsct.images import output_size

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import app  # noqa: E402 — app.py lives at the repository root, beside dsct/ and space/
from served import served  # noqa: E402
from space import planning, worker  # noqa: E402
from space.api import COMPACT_INPUTS, handler_inputs, planned  # noqa: E402
from space.words import COMPACT_HELP, WORDS  # noqa: E402

# gradio's queue (pandas 3) warns on every event; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

CAT, HUBBLE = REPO / "examples" / "cat.png", REPO / "examples" / "hubble.png"
# A few guided steps on small images: each call takes about a second on 2 CPU cores.
SMALL = dict(steps=10, skip=5, divergence_until=2, resample_repeats=2, size=64, max_long_side=96, range_restart=False)
CAPTION = re.compile(r"^#(\d+) · seed (\d+) · (DiffuseIT|AGG)\ncontent -?\d+\.\d{3} · target -?\d+\.\d{3}"
                     r"\ntiny model: not meaningful$")  # rank and seed, scores, notes: a line each


@pytest.fixture(scope="module")
def models():
    return app.get_models(["imagenet", "ffhq"], tiny=True)


@pytest.fixture(scope="module")
def client(models):
    with served(models, SMALL) as running:
        yield running


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
    assert set(api) == {"/translate", "/translate_text", "/translate_image"}
    exposed = set()
    for mode in ("text", "image"):
        names = [p["parameter_name"] for p in api[f"/translate_{mode}"]["parameters"]]
        assert names == handler_inputs(mode)
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
    (dict(source="not-an-image"), "notes.png"),
    (dict(generator="sd15"), "'sd15'"),
    (dict(resampling="no"), "resampling='no' is not allowed: true or false"),
])
def test_bad_input_is_refused_before_the_queue_with_the_message(client, overrides, message, tmp_path):
    if overrides.get("source") == "not-an-image":
        bogus = tmp_path / "notes.png"
        bogus.write_text("not a picture")
        overrides = dict(source=handle_file(bogus))
    kwargs = dict(source=handle_file(CAT), source_text="Cat", text="Black Leopard") | overrides
    with pytest.raises(ValidationError) as info:  # the event's validator: no queue, no GPU
        client.predict(**kwargs, api_name="/translate_text")
    assert message in str(info.value)


def test_style_image_is_required(client):
    with pytest.raises(ValidationError, match="- style: image-guided translation needs a style image"):
        client.predict(handle_file(CAT), None, api_name="/translate_image")


def test_the_handler_checks_too_when_called_without_the_validator(models):
    app.build_demo(models, defaults=SMALL)
    with pytest.raises(gr.Error, match="needs a style image"):
        planned("image", {"source": str(CAT), "style": None, "generator": "imagenet"})


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
    """One line per guided evaluation: the user's step count (skipped steps come from the photo, resampling
    repeats the first guided step), the fraction done, and the time elapsed and left."""
    calls = []
    settings = dict(SMALL, samples=1, seed=0, resample_repeats=3)
    plan = planning.make_plan("text", dict(settings, source=str(CAT), text="Black Leopard", source_text="Cat",
                                           generator="imagenet"))
    updates = list(worker.stream(plan, lambda p, **kw: calls.append((p, kw["desc"]))))
    total = SMALL["steps"] - SMALL["skip"] - 1 + 3  # 4 steps after the first, which runs 3 times
    assert [p for p, _ in calls] == pytest.approx([k / total for k in range(1, total + 1)])
    # steps 1-5 skipped; step 6 runs 3 times (resampling), then 7, 8, 9, 10: the last says 10 of 10
    steps = [6, 6, 6, 7, 8, 9, 10]
    for (_, line), step, k in zip(calls, steps, range(1, total + 1)):
        assert line.startswith(f"Step {step} of 10 · "), line
        assert ("resampling the first step, " + f"{k} of 3" in line) == (k <= 3), line
        assert re.search(r" · \d+:\d\d elapsed · about \d+:\d\d left$", line), line
    assert isinstance(updates[-1], worker.Done) and len(updates[-1].results) == 1


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
        assert _component(demo, WORDS["steps"][0])["value"] == PRESETS["text-fast"].steps
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


def _uploads(tmp_path: Path) -> dict[str, Path]:
    """Real files in the modes gr.Image would have flattened to 8-bit RGB (each made here)."""
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:96]
    files = {}
    wide = (xx * 600 + yy * 100).astype(np.uint16)  # 16-bit values up to ~64k: mean far from white
    files["16-bit"] = tmp_path / "deep.png"
    Image.fromarray(wide).save(files["16-bit"])
    rgba = np.dstack([rng.integers(0, 255, (72, 96, 3)), (xx * 2.6).astype(int)]).astype(np.uint8)
    files["RGBA"] = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(files["RGBA"])
    files["LA"] = tmp_path / "la.png"
    Image.fromarray(rgba[..., [0, 3]], "LA").save(files["LA"])
    palette = Image.fromarray(rgba[..., :3], "RGB").quantize(16)
    files["P+transparency"] = tmp_path / "palette.png"
    palette.save(files["P+transparency"], transparency=3)
    files["CMYK"] = tmp_path / "cmyk.jpg"
    Image.fromarray(rgba, "RGBA").convert("CMYK").save(files["CMYK"])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    files["EXIF-rotated"] = tmp_path / "rotated.jpg"
    Image.fromarray(rgba[..., :3], "RGB").save(files["EXIF-rotated"], exif=exif)
    return files


def test_uploads_reach_dsct_as_the_file_itself(client, models, tmp_path):
    """The same file gives the same picture through the app and through the library."""
    from dsct import translate
    import numpy as np

    config = preset("text", **SMALL, seed=11)
    for kind, path in _uploads(tmp_path).items():
        gallery, _ = client.predict(handle_file(path), "Cat", "Black Leopard", seed=11, **SMALL,
                                    api_name="/translate_text")
        [expected] = translate(models["imagenet"], path, text="Black Leopard", source_text="Cat", config=config)
        with Image.open(gallery[0]["image"]) as got:
            assert got.size == expected.image.size, kind
            assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(expected.image)), kind


def test_a_huge_upload_is_refused_from_its_header(client, tmp_path):
    """A 13000 x 13000 PNG header (169 megapixels) with almost no data: refused before any decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 13000, 13000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    with pytest.raises(ValidationError) as info:
        client.predict(handle_file(huge), "Cat", "Black Leopard", api_name="/translate_text")
    assert "- source:" in str(info.value) and "13000x13000" in str(info.value) and "64" in str(info.value)


def test_every_public_parameter_is_described(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for endpoint, info in api.items():
        for p in info["parameters"]:
            assert len(p["python_type"]["description"]) > 15, (endpoint, p["parameter_name"])
    steps = next(p for p in api["/translate_text"]["parameters"] if p["parameter_name"] == "steps")
    assert steps["python_type"]["description"] == "Diffusion steps: more steps: finer detail, slower (an integer in [2, 1000])"


def test_compact_endpoint_returns_images_and_json(client):
    gallery, info = client.predict(handle_file(CAT), "Black Leopard", "Cat", None, "fast", 2, 7, "imagenet",
                                   api_name="/translate")
    assert info["mode"] == "text" and info["seeds"] == sorted(info["seeds"], key=[r["seed"] for r in info["results"]].index)
    assert sorted(info["seeds"]) == [7, 8] and [r["rank"] for r in info["results"]] == [1, 2]
    for item, row in zip(gallery, info["results"]):
        assert CAPTION.match(item["caption"]).group(2) == str(row["seed"])
        assert f"content {row['content_score']:.3f}" in item["caption"]
    _, styled = client.predict(source=handle_file(CAT), style=handle_file(HUBBLE), seed=-1, api_name="/translate")
    assert styled["mode"] == "image" and len(styled["seeds"]) == 1 and 0 <= styled["seeds"][0] < 2**31
    with pytest.raises(ValidationError, match="text='Leopard' is not allowed: left out when a style image is given"):
        client.predict(source=handle_file(CAT), text="Leopard", source_text="Cat", style=handle_file(HUBBLE),
                       api_name="/translate")
    with pytest.raises(ValidationError, match="preset='medium' is not allowed"):
        client.predict(source=handle_file(CAT), text="Leopard", source_text="Cat", preset="medium", api_name="/translate")


def test_mcp_schema_lists_the_compact_tool_with_described_parameters(client):
    import httpx

    tools = httpx.get(client.src.rstrip("/") + "/gradio_api/mcp/schema", timeout=30).json()
    tool = next(t for t in tools if t["meta"]["endpoint_name"] == "translate")
    assert tool["name"] == "translate_photo"  # named for what it does
    assert tool["description"].startswith("Translate a photo toward a target text or the look of a style image")
    props = tool["inputSchema"]["properties"]
    assert list(props) == list(COMPACT_INPUTS)
    assert props["seed"]["description"] == COMPACT_HELP["seed"]
    assert all(props[n].get("description") for n in props)


def test_the_api_page_lists_the_compact_endpoint_first_with_typed_parameters_and_a_snippet_that_runs(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(api)[0] == "/translate"
    compact = {p["parameter_name"]: p for p in api["/translate"]["parameters"]}
    assert list(compact) == list(COMPACT_INPUTS)
    assert compact["samples"]["python_type"]["type"] == compact["seed"]["python_type"]["type"] == "int"
    for endpoint in ("/translate_text", "/translate_image"):
        for p in api[endpoint]["parameters"]:
            if p["parameter_name"] in ("steps", "skip", "samples", "seed", "n_cuts", "max_restarts", "size"):
                assert p["python_type"]["type"] == "int", (endpoint, p["parameter_name"])
            assert "Enter" not in p["python_type"]["description"], (endpoint, p["parameter_name"])  # no UI words
    for endpoint, info in api.items():
        for p in info["parameters"]:
            assert not p["label"].startswith("parameter_"), (endpoint, p)  # every input named
            assert p["parameter_has_default"] or p["parameter_name"] in ("source", "text", "source_text", "style"), p
    example = {name: p["example_input"] for name, p in compact.items()}
    assert (example["text"], example["source_text"], example["style"]) == ("Black Leopard", "Cat", None)
    # the snippet as shown, its one picture (a URL, unreachable here) replaced by a local file
    gallery, info = client.predict(**{**example, "source": handle_file(CAT)}, api_name="/translate")
    assert info["mode"] == "text" and len(gallery) == example["samples"]


def test_agg_through_both_endpoints(client):
    """method='agg' where the endpoint's other settings were left as they start: DiffuseIT's own settings
    among them are not the caller's, so AGG's defaults apply; captions and the JSON name the method."""
    gallery, _ = client.predict(handle_file(CAT), "Cat", "Black Leopard", method="agg", samples=2, seed=4,
                                api_name="/translate_text")
    assert [CAPTION.match(item["caption"]).group(3) for item in gallery] == ["AGG", "AGG"]
    assert {int(CAPTION.match(item["caption"]).group(2)) for item in gallery} == {4, 5}
    styled, info = client.predict(source=handle_file(CAT), style=handle_file(HUBBLE), seed=3, method="agg",
                                  api_name="/translate")
    assert (info["mode"], info["method"], info["seeds"]) == ("image", "agg", [3])
    assert CAPTION.match(styled[0]["caption"]).group(3) == "AGG"


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(method="agg", lambda_ssim=5.0, api_name="/translate_text"),
     "lambda_ssim=5.0 is not allowed: 1000.0 (its default) with method='agg': only method='diffuseit' reads it"),
    (dict(method="diffuseit", lambda_gt=50.0, api_name="/translate_text"),
     "lambda_gt=50.0 is not allowed: 200.0 (its default) with method='diffuseit': only method='agg' reads it"),
    (dict(method="agg", eta=1.5, api_name="/translate_text"), "eta=1.5 is not allowed"),
    (dict(method="sd", api_name="/translate_text"), "method='sd' is not allowed"),
    (dict(method="agg", preset="fast", api_name="/translate"),
     "preset='fast' is not allowed: 'default' or 'full' with method='agg'"),
])
def test_bad_agg_settings_are_refused_with_the_field_named(client, kwargs, message):
    with pytest.raises(ValidationError) as info:
        client.predict(source=handle_file(CAT), source_text="Cat", text="Black Leopard", **kwargs)
    assert message in str(info.value)
