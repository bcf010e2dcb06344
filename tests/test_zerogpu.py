"""The Space (app.py and space/) as deployed on a ZeroGPU Space, on the CPU as far as the spaces
package allows: the GPU function is wrapped, its duration function takes its exact arguments, what crosses into the worker
pickles, the 300 s cap sees the duration factor, the memory guard refuses what would not fit, the
deadline returns what finished, Stop only signals, and the front matter preloads every weight."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from dsct import ConfigError, Result, budget, preset
from dsct.hub import WEIGHTS
from dsct.images import working_size

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import app  # noqa: E402 — the Space's entry point; it imports spaces first
from space import api, planning, worker  # noqa: E402

CAT = REPO / "examples" / "cat.png"
SMALL = dict(steps=10, skip=5, divergence_until=2, resample_repeats=2, size=64, max_long_side=96, range_restart=False)
ZERO_ENV = dict(SPACES_ZERO_GPU="true", SPACES_ZERO_DEVICE_API_URL="http://127.0.0.1:9")


@pytest.fixture(scope="module")
def models():
    loaded = app.get_models(["imagenet"], tiny=True)
    app.build_demo(loaded, defaults=SMALL)
    return loaded


def _values(**overrides):
    return dict(source=str(CAT), source_text="Cat", text="Black Leopard", generator="imagenet", **SMALL) | overrides


def _args(**overrides):
    """The text handler's arguments in order: the preset's values, SMALL, then ``overrides``."""
    values = {"resampling": True, **dataclasses.asdict(preset("text")), **_values(**overrides)}
    return [values[n] for n in api.handler_inputs("text")]


def test_under_zero_gpu_the_app_builds_and_its_gpu_function_is_wrapped():
    script = """
import inspect, pickle, app
from space import planning, worker
assert planning.ON_ZERO_GPU
assert hasattr(worker.run_translation, "zerogpu"), "spaces did not wrap the GPU function"
gpu, duration = inspect.signature(worker.run_translation.__wrapped__), inspect.signature(planning.gpu_duration)
assert list(gpu.parameters) == list(duration.parameters) == ["plan"], (gpu, duration)
models = app.get_models(["imagenet"], tiny=True)
demo = app.build_demo(models, defaults=app.TINY_DEFAULTS)
limits = {fn.api_name: fn.concurrency_limit for fn in demo.fns.values() if fn.api_name in ("translate_text", "translate_image")}
assert limits == {"translate_text": None, "translate_image": None}, limits
plan = planning.make_plan("text", dict(source="examples/cat.png", source_text="Cat", text="Leopard",
                                       generator="imagenet", **app.TINY_DEFAULTS))
assert pickle.loads(pickle.dumps(plan)) == plan
print("ok", planning.gpu_duration(plan))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPACES_", "DSCT_"))} | ZERO_ENV
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ")


def test_local_translations_share_one_gpu(models):
    demo = app.build_demo(models, defaults=SMALL)
    fns = [fn for fn in demo.fns.values() if fn.api_name in ("translate_text", "translate_image")]
    assert [(fn.concurrency_limit, fn.concurrency_id) for fn in fns] == [(1, "gpu"), (1, "gpu")]


def test_steps_and_yields_pickle(models):
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    result = Result(image=image, seed=3, rank=1, content_score=0.1, target_score=0.2, terms={"range": 0.0})
    for item in (worker.Step(1, 5, 1, 0, [(image, "sample 1 · step 1/5")]), worker.Done([result])):
        assert pickle.loads(pickle.dumps(item)) == item


def test_budget_defaults_and_edges_by_hand():
    """The 256 ImageNet model at the H100 speed by default; a measurement normalised to the reference size it
    was taken against; no sample when the fixed part alone exceeds the memory."""
    assert budget.prior_speed("text") == budget.StepSpeed(0.217, 256 * 256)
    assert budget.prior_speed("image", slowdown=2.0) == budget.StepSpeed(2 * 0.089, 256 * 256)
    # 2.8 s at twice the 512 model's 512² (pixel factor 2), batch 1
    assert budget.StepSpeed.from_measurement(2.8, 1, 2 * 512 * 512, 512 * 512) == budget.StepSpeed(1.4, 512 * 512)
    assert budget.max_samples_that_fit("text", 256 * 256, 43.2) == 4  # (43.2 − 3.14) / 8.866 = 4.5
    assert budget.max_samples_that_fit("text", 256 * 256, 3.0) == 0  # below the fixed 3.14 GB


def test_cost_is_sublinear_in_samples_and_learns_the_measured_speed(models, monkeypatch):
    config = preset("text", **SMALL)
    evaluations = config.t_start + config.resample_repeats  # 4 + 2
    assert evaluations == 6
    fixed = planning.GPU_START_S + planning.FINISH_S
    prior = budget.H100_STEP_SECONDS["text"] * planning.PRIOR_SLOWDOWN
    one, _ = planning.cost("imagenet", config, 256 * 256)
    assert one == pytest.approx(fixed + 1.5 * 6 * prior)
    four, _ = planning.cost("imagenet", dataclasses.replace(config, samples=4), 256 * 256)
    assert four - fixed == pytest.approx((one - fixed) * 1.54)  # 1 + 3 x 0.18, not 4x
    wide, _ = planning.cost("imagenet", config, 256 * 448)
    assert wide - fixed == pytest.approx((one - fixed) * 448 / 256)
    # measured: 0.2 s per evaluation of 2 samples at 256x512 -> 0.2 / (1.18 * 2) s for one at 256x256
    monkeypatch.setitem(planning.MEASURED_SPEED, ("imagenet", "text"),
                        budget.StepSpeed.from_measurement(0.2, 2, 256 * 512))
    learned, _ = planning.cost("imagenet", config, 256 * 256)
    assert learned == pytest.approx(fixed + 1.5 * 6 * 0.2 / 2.36)


def test_an_agg_request_is_priced_by_its_own_work(models):
    """AGG: per sample 19 guided steps, each a guided evaluation, and 41 plain ones at 0.15 of one in text
    mode (a UNet forward's 1 295 operators of a text evaluation's 9 494, rounded up); the inversion's 60 plain
    passes at batch 1; no restart margin (AGG never restarts). Image mode: plain passes at 0.36."""
    fixed = planning.GPU_START_S + planning.FINISH_S
    prior = budget.H100_STEP_SECONDS["text"] * planning.PRIOR_SLOWDOWN
    seconds, memory = planning.cost("imagenet", preset("text", method="agg"), 256 * 256)
    assert seconds == pytest.approx(fixed + (19 + 41 * 0.15) * prior + 60 * 0.15 * prior)
    two, _ = planning.cost("imagenet", preset("text", method="agg", samples=2), 256 * 256)
    assert two == pytest.approx(fixed + (19 + 41 * 0.15) * prior * 1.18 + 60 * 0.15 * prior)  # inversion per source
    image_prior = budget.H100_STEP_SECONDS["image"] * planning.PRIOR_SLOWDOWN
    image, _ = planning.cost("imagenet", preset("image", method="agg"), 256 * 256)
    assert image == pytest.approx(fixed + (19 + 41 * 0.36) * image_prior + 60 * 0.36 * image_prior)
    diffuseit, _ = planning.cost("imagenet", preset("text"), 256 * 256)
    assert seconds < 0.7 * diffuseit  # the method offered as the faster one is planned so
    diffuseit_memory = budget.peak_memory_gb("text", 1, 256 * 256)
    assert memory == pytest.approx(diffuseit_memory + 60 * 3 * 256 * 256 * 4 / 1e9)  # + the inversion's 60 x̂0


def test_the_duration_asked_for_is_divided_by_the_factor_zero_gpu_multiplies_it_by(models, monkeypatch):
    plan = planning.make_plan("text", _values())
    monkeypatch.setattr(planning, "duration_factor", lambda: 1.5)
    assert planning.gpu_duration(plan) == math.ceil(plan.seconds / 1.5)


def test_the_300_s_cap_includes_the_duration_factor(models, monkeypatch):
    monkeypatch.setattr(planning, "ON_ZERO_GPU", True)
    monkeypatch.setattr(planning, "duration_factor", lambda: 1.5)
    # 3 s per evaluation (measured): 20 + 10 + 1.5 * 3 * evaluations
    monkeypatch.setitem(planning.MEASURED_SPEED, ("imagenet", "text"), budget.StepSpeed(3.0))
    fits = dict(steps=61, skip=0, resample_repeats=1)  # 61 evaluations: 30 + 274.5 = 304.5 s > 300
    with pytest.raises(ConfigError, match=r"needs about 304 s of GPU time and ZeroGPU allows 300 s"):
        planning.make_plan("text", _values(**fits))  # asking for 304.5 / 1.5 = 203 s would pass a cap without it
    plan = planning.make_plan("text", _values(steps=59, skip=0, resample_repeats=1))  # 30 + 265.5 = 295.5 s
    assert plan.seconds == pytest.approx(295.5) and planning.gpu_duration(plan) == 197


def test_the_memory_guard_refuses_what_the_slice_cannot_hold(models, monkeypatch):
    monkeypatch.setattr(planning, "ON_ZERO_GPU", True)
    with Image.open(CAT) as im:
        w, h = working_size(*im.size, size=256, max_long_side=448, resize_mode="resize")
    limit = 48 * 0.9
    per_sample = 8.866 * max(1.0, w * h / 65536)  # text: GB per sample at 256x256, scaled by pixels
    fit = math.floor((limit - 3.140) / per_sample)
    need = 3.140 + (fit + 1) * per_sample
    assert need > limit and fit >= 1
    with pytest.raises(ConfigError) as info:
        planning.make_plan("text", _values(size=256, max_long_side=448, samples=fit + 1))
    assert str(info.value) == (f"samples={fit + 1} is not allowed: at most {fit} at {w}x{h}: {fit + 1} would need "
                               f"about {need:.0f} GB of GPU memory and {limit:.0f} GB can be used here")
    assert planning.make_plan("text", _values(size=256, max_long_side=448, samples=fit)).memory_gb <= limit


def test_the_validator_marks_the_field_before_the_queue(models, monkeypatch):
    monkeypatch.setattr(planning, "ON_ZERO_GPU", True)
    names = api.handler_inputs("text")
    checks = api.make_validator("text")(*_args(size=256, max_long_side=448, samples=16))
    bad = {n: c["message"] for n, c in zip(names, checks) if not c["is_valid"]}
    assert list(bad) == ["samples"] and "GB of GPU memory" in bad["samples"]


def test_a_run_past_its_deadline_says_so(models, monkeypatch):
    monkeypatch.setattr(planning, "ON_ZERO_GPU", True)
    plan = dataclasses.replace(planning.make_plan("text", _values(steps=200, skip=0)),
                               seconds=planning.GPU_START_S + planning.FINISH_S + 1e-3)  # a deadline that has passed
    with pytest.raises(gr.Error, match="GPU time ran out after 1 guided steps, before any sample finished"):
        list(worker.run_translation(plan))


def test_the_estimate_beside_the_button(models, monkeypatch):
    monkeypatch.setattr(planning, "ON_ZERO_GPU", True)
    seconds, memory = planning.cost("imagenet", preset("text", **SMALL),
                               math.prod(working_size(*Image.open(CAT).size, size=64, max_long_side=96,
                                                      resize_mode="resize")))
    assert api.estimate("text", *_args()) == f"≈ {seconds:.0f} s of your daily ZeroGPU quota · ≈ {memory:.0f} GB"
    assert "skip=10 is not allowed" in api.estimate("text", *_args(skip=10))


def test_closing_the_stream_does_not_wait_for_the_gpu(models):
    """Stop closes the stream on the event loop; it must return while the GPU is still inside a step."""
    inside_step, release = threading.Event(), threading.Event()
    closed = []

    def gpu():
        try:
            yield "first"
            inside_step.set()
            release.wait(30)  # a long guided step
            yield "second"
        finally:
            closed.append(threading.current_thread().name)

    stream = worker.drained(gpu())
    assert next(stream) == "first"
    inside_step.wait(5)
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(5)
    assert not closer.is_alive(), "closing waited for the GPU's next item"
    assert closed == []  # the GPU generator is still in its step
    release.set()
    deadline = time.monotonic() + 10
    while not closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closed == ["dsct-gpu-drain"]  # closed after its next item, by the draining thread


def test_the_gpu_generator_runs_in_the_callers_context(models):
    """spaces reads the visitor's request (their quota token) from gradio's context variables."""
    import contextvars

    visitor = contextvars.ContextVar("visitor")
    seen = []

    def gpu():
        seen.append(visitor.get(None))
        yield "done"

    visitor.set("token of the visitor")
    assert list(worker.drained(gpu())) == ["done"]
    assert seen == ["token of the visitor"]


def test_a_small_run_does_not_teach_a_speed(models, monkeypatch):
    """Timing at 64x96 says nothing of 256x256 (pixel_factor is never below 1): it is not learned."""
    monkeypatch.setattr(planning, "MEASURED_SPEED", {})
    cuda = {g: dataclasses.replace(m, device=__import__("torch").device("cuda")) for g, m in models.items()}
    monkeypatch.setattr(planning, "MODELS", cuda)
    monkeypatch.setattr(planning, "memory_limit_gb", lambda: None)  # no CUDA here to ask
    def run_translation(plan):
        yield from (worker.Step(1, 2, 1, 0, None), worker.Step(2, 2, 1, 0, None), worker.Done([]))

    monkeypatch.setattr(worker, "run_translation", run_translation)
    plan = planning.make_plan("text", _values())
    list(worker.stream(plan, None))
    assert planning.MEASURED_SPEED == {}
    big = dataclasses.replace(plan, pixels=256 * 256)
    list(worker.stream(big, None))
    assert ("imagenet", "text") in planning.MEASURED_SPEED


def test_front_matter_preloads_every_weight_file_and_pins_zero_gpu_versions():
    front = (REPO / "README.md").read_text().split("---")[1]
    lines = front.splitlines()
    start = lines.index("preload_from_hub:")
    preload = set()
    for line in lines[start + 1:]:
        if not line.startswith("  - "):
            break
        repo, files = line[4:].split(" ")
        preload |= {(repo, f) for f in files.split(",")}
    # Every file but the opt-in ones: the 2.24 GB class-conditional 512 UNet is the documented exception.
    assert preload == {(w.repo_id, w.filename) for w in WEIGHTS.values() if not w.opt_in}
    assert [w.name for w in WEIGHTS.values() if w.opt_in] == ["adm_imagenet512"]
    assert ("omriav/blended-diffusion", "checkpoints/512x512_diffusion.pt") not in preload
    assert 'python_version: "3.12"' in lines
    requirements = (REPO / "requirements.txt").read_text().splitlines()
    assert "torch==2.11.0" in requirements and "torchvision==0.26.0" in requirements
