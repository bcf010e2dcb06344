"""Captured guided steps: the whole of ``sampler.guided_step`` (UNet forward, every loss and
``autograd.grad``) replayed as one CUDA graph, or compiled whole by ``torch.compile``.

An eager step on a GPU is bound by launching its ~9,500 small kernels, not by arithmetic; a graph
launches them all at once. The step can be captured because it takes device tensors only and
draws, uploads and reads back nothing (the sampler draws noise and CLIP views on the host and
checks restarts after the step). ``ModelConfig.step_capture`` picks the mode; "eager" is the
default until the GPU figures say a mode pays (README, Performance).

CUDA graphs: one graph per (networks, settings, batch, shapes), all in one memory pool. Inputs are
copied into the graph's static buffers before each replay and outputs copied out after it, since
the next replay (of any graph in the pool) may overwrite them. The batch is padded to the call's
sample count by repeating its first row, so a sample that leaves to restart changes no shape and
the other rows compute exactly what they computed before (every operator of the step is per sample).
Fixed features with one row per sample (several images in one batch) are padded the same way.
A capture that fails logs why and the step runs eagerly from then on.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from .config import TranslationConfig
from .diffusion import Schedule
from .guidance import FixedFeatures, Guide, GuideState
from .sampler import StepFn, StepOutput, guided_step

__all__ = ["GraphedStep", "CompiledStep", "pad_rows", "step_function", "step_settings", "MAX_GRAPHS"]

log = logging.getLogger(__name__)

WARMUP_RUNS = 2  # eager runs on a side stream before capture: cuBLAS/cuDNN pick kernels, allocate workspaces
MAX_GRAPHS = 16  # graphs kept (least recently used dropped): each holds its activations in the pool
COMPILE_RECOMPILES = 64  # the text preset alone has 13 working sizes; Dynamo's default limit is 8


def pad_rows(t: Tensor | None, rows: int) -> Tensor | None:
    """``t`` with its first row repeated until it has ``rows`` rows (dim 0)."""
    if t is None or t.shape[0] == rows:
        return t
    return torch.cat([t, t[:1].expand(rows - t.shape[0], *t.shape[1:])])


def _padded(rows: tuple, batch: int) -> tuple:
    return pytree.tree_map(lambda v: pad_rows(v, batch) if isinstance(v, Tensor) else v, rows)


def _padded_fixed(fixed: FixedFeatures, batch: int) -> FixedFeatures:
    """Fixed features with a row per sample padded like the samples; shared ones (one row) as they are."""
    return fixed if fixed.src.shape[0] == 1 else _padded(fixed, batch)


def step_settings(config: TranslationConfig) -> tuple:
    """The settings a guided step reads (graphs are shared by calls that agree on them): not the
    seed, sample count, restart or output settings, which change nothing inside a step. A setting
    that a step comes to read must be added here."""
    return (config.mode, tuple(sorted(config.weights.items())), config.noise_aug, config.divergence_until,
            config.regularize_content, config.prog_contrast, config.n_cuts, config.steps)


def _signature(tree: Any) -> tuple:
    leaves, spec = pytree.tree_flatten(tree)
    return str(spec), tuple(None if v is None else (tuple(v.shape), v.dtype, v.device) for v in leaves)


class _Graph:
    """One captured step: static inputs, the graph, static outputs. The last argument (the fixed
    features) is copied in only when it is another object than the one copied last."""

    def __init__(self, fn: Callable[..., StepOutput], args: tuple, pool) -> None:
        # The graph reads what fn reaches (weights, buffers, the schedule tables) by address: keeping
        # fn keeps them alive, so their memory is never handed to another tensor while the graph exists.
        self.fn = fn
        self.inputs = pytree.tree_map(lambda v: v.clone() if isinstance(v, Tensor) else v, args)
        self.fixed_source = args[-1]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        try:  # thread_local: another thread's eager work does not invalidate this capture
            with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
                self.outputs = fn(*self.inputs)
        finally:  # a capture that raised in capture_end may leave this thread on the capture stream
            torch.cuda.set_stream(stream)

    def __call__(self, args: tuple) -> StepOutput:
        tensors = lambda tree: [v for v in pytree.tree_leaves(tree) if isinstance(v, Tensor)]  # noqa: E731
        static, new = tensors(self.inputs), tensors(args)
        copy = len(static) if self.fixed_source is not args[-1] else len(static) - len(tensors(args[-1]))
        for dst, src in zip(static[:copy], new[:copy]):
            dst.copy_(src)
        self.fixed_source = args[-1]
        self.graph.replay()
        # copied out: the outputs' memory is the graph's, rewritten by its next replay
        return pytree.tree_map(lambda v: v.clone() if isinstance(v, Tensor) else v, self.outputs)


class GraphedStep:
    """``guided_step`` of one guide as CUDA graphs; a ``StepFn`` for ``sample_guided(step=...)``.

    ``batch`` is the call's sample count: every step runs with that many rows (see the module
    docstring). Graphs are shared between calls with the same networks, settings and shapes; the
    guide's fixed features are graph inputs, so a new source or style image needs no new capture.
    ``guide`` gives the networks and settings; each call's guide gives the fixed features.
    """

    _graphs: OrderedDict[tuple, _Graph] = OrderedDict()  # shared by all instances: one pool, bounded
    _pool = None
    _failed: dict[tuple, str] = {}
    _lock = threading.Lock()  # static buffers are shared: one replay (copy in, replay, copy out) at a time

    def __init__(self, unet: torch.nn.Module, schedule: Schedule, guide: Guide, batch: int) -> None:
        self.unet, self.schedule, self.guide, self.batch = unet, schedule, guide, batch
        nets = (unet, guide.vit, guide.clip, guide.arcface)
        self._key = (tuple(id(n) for n in nets), step_settings(guide.config), schedule.num_steps, batch)
        self._fixed: tuple = (None, None)  # (a guide's fixed features, them padded to the batch): padded once

    def _padded_fixed(self, fixed):
        if self._fixed[0] is not fixed:
            self._fixed = (fixed, _padded_fixed(fixed, self.batch))
        return self._fixed[1]

    def _run(self, x, i, noise, views, state, y, fixed) -> StepOutput:
        guide = dataclasses.replace(self.guide, fixed=fixed)
        return guided_step(self.unet, self.schedule, guide, x, i, noise, views, state, y)

    def __call__(self, guide: Guide, x: Tensor, i: Tensor, noise: Tensor, views: Tensor | None,
                 state: GuideState, y: Tensor | None = None) -> StepOutput:
        live = x.shape[0]
        rows = (x, i, noise, views, state, y)
        fixed = self._padded_fixed(guide.fixed)
        padded = _padded(rows, self.batch)
        key = (self._key, _signature(padded), _signature(fixed))
        if key in GraphedStep._failed:
            return guided_step(self.unet, self.schedule, guide, *rows)
        args = (*padded, fixed)
        with GraphedStep._lock:
            graph = GraphedStep._graphs.get(key) or self._capture(key, args)
            if graph is None:
                return guided_step(self.unet, self.schedule, guide, *rows)
            GraphedStep._graphs.move_to_end(key)
            out = graph(args)
        return pytree.tree_map(lambda v: v[:live], out)

    def _capture(self, key: tuple, args: tuple) -> _Graph | None:
        try:
            if GraphedStep._pool is None:
                GraphedStep._pool = torch.cuda.graph_pool_handle()
            graph = _Graph(self._run, args, GraphedStep._pool)
        except Exception as error:  # any capture error: the step is still correct eagerly
            reason = f"{type(error).__name__}: {error}"
            GraphedStep._failed[key] = reason
            log.warning("CUDA graph capture of the guided step failed, running it eagerly: %s", reason)
            return None
        GraphedStep._graphs[key] = graph
        while len(GraphedStep._graphs) > MAX_GRAPHS:
            GraphedStep._graphs.popitem(last=False)
        return graph

    @classmethod
    def clear(cls) -> None:
        """Drop every graph and its memory (e.g. before loading other networks)."""
        cls._graphs.clear()
        cls._failed.clear()
        cls._pool = None


@functools.lru_cache(maxsize=None)
def _compiled(backend: str | None, mode: str | None) -> Callable[..., StepOutput]:
    # Set once, not patched per call (the patch is process-wide and not thread-safe): Dynamo traces
    # autograd.grad only with trace_autograd_ops on, and each working size is one more compile.
    torch._dynamo.config.trace_autograd_ops = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILE_RECOMPILES)
    return torch.compile(guided_step, fullgraph=True, dynamic=False, backend=backend or "inductor", mode=mode)


class CompiledStep:
    """``guided_step`` compiled whole; rows padded to ``batch`` as for graphs, so a restart does not
    recompile. Any compile or run error logs why, and this call's steps then run eagerly."""

    def __init__(self, unet: torch.nn.Module, schedule: Schedule, guide: Guide, batch: int, backend: str | None):
        self.unet, self.schedule, self.guide, self.batch = unet, schedule, guide, batch
        self.cudagraphs = schedule.betas.device.type == "cuda" and backend in (None, "inductor")
        self.fn: Callable[..., StepOutput] | None = _compiled(backend, "reduce-overhead" if self.cudagraphs else None)
        self._guide: tuple = (None, None)  # (a call's guide, it with its fixed features padded to the batch)

    def __call__(self, guide: Guide, x: Tensor, i: Tensor, noise: Tensor, views: Tensor | None,
                 state: GuideState, y: Tensor | None = None) -> StepOutput:
        rows = (x, i, noise, views, state, y)
        if self.fn is not None:
            try:
                if self.cudagraphs:  # a new step: the previous step's graph outputs may be rewritten
                    torch.compiler.cudagraph_mark_step_begin()
                if self._guide[0] is not guide:
                    self._guide = (guide, dataclasses.replace(guide, fixed=_padded_fixed(guide.fixed, self.batch)))
                out = self.fn(self.unet, self.schedule, self._guide[1], *_padded(rows, self.batch))
                # cloned: reduce-overhead outputs live in its graph pool, and the sampler keeps x̂0 across steps
                return pytree.tree_map(lambda v: v[:x.shape[0]].clone() if isinstance(v, Tensor) else v, out)
            except Exception as error:  # e.g. the recompile limit (fullgraph raises on it), an Inductor error
                log.warning("the compiled guided step failed, running it eagerly: %s: %s", type(error).__name__, error)
                self.fn = None
        return guided_step(self.unet, self.schedule, guide, *rows)


def step_function(capture: str, unet: torch.nn.Module, schedule: Schedule, guide: Guide, batch: int,
                  *, compile_backend: str | None = None) -> StepFn:
    """The ``StepFn`` for ``ModelConfig.step_capture``. A CUDA graph needs a CUDA device: elsewhere
    the step runs eagerly (logged). ``compile_backend`` (e.g. "aot_eager") is for tests on the CPU."""
    schedule = schedule.to(guide.fixed.src.device)
    if capture == "cuda-graph":
        if guide.fixed.src.device.type != "cuda":
            log.info("step_capture='cuda-graph' needs a CUDA device; the step runs eagerly on %s", guide.fixed.src.device)
        else:
            return GraphedStep(unet, schedule, guide, batch)
    if capture == "compile":
        return CompiledStep(unet, schedule, guide, batch, compile_backend)
    return functools.partial(guided_step, unet, schedule)
