"""The capturable guided step (dsct.capture): device tensors in and out, nothing drawn, uploaded
or read back inside; compiled whole it equals the eager step; padded rows change no real row; a
CUDA-graph request off CUDA runs eagerly with the same results."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from dsct import ModelConfig, load_models, translate
from dsct.capture import pad_rows, step_function
from dsct.guidance import build_guide
from dsct.pipeline import schedule_for
from dsct.sampler import guided_step

from helpers import picture, small, tiny_models

H, W = 32, 64  # non-square on purpose


class HostTraffic(TorchDispatchMode):
    """Records every operator that touches a tensor off the meta device, and every host read."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten._local_scalar_dense.default:
            self.found.append(f"{func} (reads a value back to the host)")
        for v in pytree.tree_leaves((args, kwargs, out)):
            if isinstance(v, torch.Tensor) and v.device.type != "meta":
                self.found.append(f"{func} on {v.device} {tuple(v.shape)}")
        return out


def _inputs(guide, batch, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, H, W, generator=g).to(device)
    noise = torch.randn(batch, 3, H, W, generator=g).to(device)
    i = torch.tensor([11, 7][:batch] + [11] * max(0, batch - 2), device=device)
    views = guide.draw_views([torch.Generator().manual_seed(seed + k) for k in range(batch)], H, W)
    return x, i, noise, views, guide.initial_state(batch)


def _text_guide(models, x_src, **overrides):
    cfg = small("text", steps=20, skip=8, size=H, max_long_side=W, **overrides)
    return build_guide(cfg, schedule_for(cfg.steps), x_src, vit=models.vit, clip=models.clip, text="tiger", source_text="cat")


@pytest.mark.parametrize("mode", ["text", "image", "faces"])
def test_the_step_moves_nothing_between_host_and_device(mode):
    """On meta tensors any host tensor inside the step (a table or mean/std uploaded per call, a
    view drawn inside) or any value read back shows up: a CUDA graph would not replay it."""
    models = load_models(ModelConfig(tiny=True, generator="ffhq" if mode == "faces" else "imagenet"), "meta")
    x_src = torch.zeros(1, 3, H, W, device="meta")
    if mode == "text":
        guide = _text_guide(models, x_src)
    else:
        cfg = small("image", steps=20, skip=8, size=H, max_long_side=W, lambda_cls=1.0, lambda_l2=1.0,
                    lambda_id=1.0 if mode == "faces" else 0.0)
        guide = build_guide(cfg, schedule_for(cfg.steps), x_src, vit=models.vit, arcface=models.arcface,
                            style=torch.zeros_like(x_src))
        assert (guide.arcface is not None) == (mode == "faces")
    x, i, noise, views, state = _inputs(guide, 2, "meta")
    assert (views is not None) == (mode == "text")
    with HostTraffic() as spy:
        out = guided_step(models.unet, guide.schedule, guide, x, i, noise, views, state)
    assert spy.found == []
    assert out.x_prev.shape == (2, 3, H, W) and not out.x_prev.requires_grad


def test_padded_rows_leave_the_real_rows_unchanged():
    """A graph runs every step with the call's batch, padding leavers' rows; the real rows must
    compute what they compute alone (every operator of the step is per sample)."""
    m = tiny_models()
    x_src = torch.rand(1, 3, H, W) * 2 - 1
    guide = _text_guide(m, x_src)
    x, i, noise, views, state = _inputs(guide, 1, "cpu")
    alone = guided_step(m.unet, guide.schedule, guide, x, i, noise, views, state)
    padded = [pad_rows(v, 3) for v in (x, i, noise, views)]
    assert padded[0].shape[0] == 3 and torch.equal(padded[0][2], x[0])
    state3 = guide.initial_state(3)
    both = guided_step(m.unet, guide.schedule, guide, *padded, state3)
    for got, want in zip(pytree.tree_leaves(both), pytree.tree_leaves(alone)):
        torch.testing.assert_close(got[:1], want, rtol=1e-4, atol=1e-4)  # as batch (a, b) == runs a, b


def test_compiled_step_equals_the_eager_step():
    """torch.compile of the whole step (fullgraph: one graph, autograd.grad traced) on the CPU with
    the aot_eager backend: the same x_{t-1} (it carries the guidance gradient), x̂0, terms and state."""
    m = tiny_models()
    x_src = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3)) * 2 - 1
    guide = _text_guide(m, x_src)
    args = _inputs(guide, 2, "cpu", seed=5)
    eager = guided_step(m.unet, guide.schedule, guide, *args)
    compiled = step_function("compile", m.unet, guide.schedule, guide, 2, compile_backend="eager")(guide, *args)
    assert eager.terms.keys() == compiled.terms.keys()
    for got, want in zip(pytree.tree_leaves(compiled), pytree.tree_leaves(eager)):
        assert (got - want).abs().max() <= 1e-6 * want.abs().max().clamp_min(1e-12)


def test_cuda_graph_request_off_cuda_runs_eagerly(caplog):
    cfg = small("image", samples=2, steps=6, skip=3, resample_repeats=1, range_restart=False)
    eager = tiny_models()
    graphed = load_models(ModelConfig(tiny=True, step_capture="cuda-graph"), "cpu")
    with caplog.at_level(logging.INFO, logger="dsct.capture"):
        got = translate(graphed, picture(), style=picture(seed=1), config=cfg)
    assert "needs a CUDA device" in caplog.text
    want = translate(eager, picture(), style=picture(seed=1), config=cfg)
    assert [r.image.tobytes() for r in got] == [r.image.tobytes() for r in want]


def test_a_failed_capture_logs_why_and_runs_eagerly(caplog):
    """Here (no CUDA device) every capture fails: the step must still be the eager one, and the
    failure is logged once per shape, not retried at every step."""
    from dsct.capture import GraphedStep

    m = tiny_models()
    x_src = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(4)) * 2 - 1
    guide = _text_guide(m, x_src)
    GraphedStep.clear()
    step = GraphedStep(m.unet, guide.schedule, guide, batch=2)
    args = _inputs(guide, 2, "cpu", seed=6)
    with caplog.at_level(logging.WARNING, logger="dsct.capture"):
        first, second = step(guide, *args), step(guide, *args)
    assert caplog.text.count("CUDA graph capture of the guided step failed, running it eagerly") == 1
    want = guided_step(m.unet, guide.schedule, guide, *args)
    for out in (first, second):
        for got, expected in zip(pytree.tree_leaves(out), pytree.tree_leaves(want)):
            assert torch.equal(got, expected)
    GraphedStep.clear()
