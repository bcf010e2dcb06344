"""The GPU function and its streaming: ``run_translation`` runs dsct in a thread and yields a Step
per guided step, ``drained`` reads it from a thread of its own (so Stop never blocks the event
loop), and ``stream`` reports progress and teaches the plan this GPU's speed.

Settings the tests change at run time (ZeroGPU or not, the models served) are read from
``planning`` as its attributes, never copied into this module's names.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr
import spaces
import torch

from dsct import Cancelled, DSCTError, Result, StepEvent, translate
from dsct.images import to_pil

from . import planning
from .planning import Plan, gpu_duration
from .words import progress_line, restart_line, user_step

log = logging.getLogger("dsct.app")

PREVIEW_EVERY = 5  # guided steps between x̂0 previews: the PNG round trip costs more than it shows
T = TypeVar("T")


@dataclass(frozen=True)
class Step:
    """One guided step done; ``previews`` (x̂0 with captions) only every PREVIEW_EVERY steps."""

    step: int
    total: int
    batch: int  # samples that ran this step
    restarts: int  # range restarts so far, all samples together
    previews: list[tuple[Any, str]] | None
    sample_restarts: tuple[int, ...] = ()  # range restarts so far, per sample of the batch


@dataclass(frozen=True)
class Done:
    results: list[Result]


def user_error(error: BaseException) -> gr.Error:
    """Every failure as a gr.Error whose message says what went wrong (and, where we know, what to do)."""
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, DSCTError):  # the user's to fix: no server traceback
        return gr.Error(str(error), print_exception=False)
    if isinstance(error, torch.OutOfMemoryError):
        return gr.Error("out of GPU memory: lower samples, size or max_long_side")
    log.error("translation failed", exc_info=error)
    return gr.Error(f"translation failed ({type(error).__name__}: {error})")


@spaces.GPU(duration=gpu_duration)
def run_translation(plan: Plan) -> Iterator[Step | Done]:
    """Run ``dsct.translate`` in a thread and yield a Step per guided step, then Done.

    A sync generator, so ZeroGPU streams what it yields. When it is closed (Stop, a closed tab),
    the next progress callback raises Cancelled and the sampler stops between two steps. On
    ZeroGPU the run gets a deadline inside the granted time: near it no range restart starts and
    the samples that finished are returned, rather than the call being killed with nothing.
    """
    models, config = planning.MODELS[plan.generator], plan.config
    deadline = (time.monotonic() + plan.seconds - planning.GPU_START_S - planning.FINISH_S
                if planning.ON_ZERO_GPU else None)
    events: queue.SimpleQueue[Step | Done | BaseException] = queue.SimpleQueue()
    stop = threading.Event()

    def on_step(event: StepEvent) -> None:
        if stop.is_set():
            raise Cancelled("stopped by the user")
        previews = None
        if (event.step - 1) % PREVIEW_EVERY == 0:
            captions = (f"sample {k + 1} · step {event.step}/{event.total}" for k in event.sample_ids)
            previews = list(zip(to_pil(event.x0_pred), captions))
        events.put(Step(event.step, event.total, len(event.sample_ids), sum(event.restarts), previews,
                        tuple(event.restarts)))

    def work() -> None:
        try:
            events.put(Done(translate(models, plan.source, text=plan.text, source_text=plan.source_text,
                                      style=plan.style, config=config, callback=on_step, deadline=deadline)))
        except BaseException as e:  # handed to the generator, which raises it in the caller's thread
            events.put(e)

    thread = threading.Thread(target=work, name="dsct-translate", daemon=True)
    thread.start()
    try:
        while True:
            item = events.get()
            if isinstance(item, BaseException):
                raise user_error(item) from item
            yield item
            if isinstance(item, Done):
                return
    finally:  # closed by drained's thread (or spaces' worker), never on the event loop: waiting is fine
        stop.set()
        thread.join()  # at most one step: the GPU is not handed on while a step still runs on it


_END = object()


def drained(gpu: Generator[T, None, None]) -> Iterator[T]:
    """``gpu``'s items, read by a thread of their own.

    Gradio closes a cancelled generator on its event loop. Closing spaces' ZeroGPU wrapper waits
    for the worker's next yield, which would stall the whole server for up to a step; closing this
    generator only raises a flag, and the thread closes ``gpu`` after its next item.
    """
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    stop = threading.Event()

    def drain() -> None:
        try:
            for item in gpu:
                items.put(item)
                if stop.is_set():
                    break
        except BaseException as e:  # raised again in the consumer's thread
            items.put(e)
        finally:
            try:
                gpu.close()
            finally:
                items.put(_END)  # whatever closing raised, the consumer is not left waiting

    # gradio's request context (spaces reads the visitor's token from it) travels with the thread
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(drain,), name="dsct-gpu-drain", daemon=True).start()
    try:
        while (item := items.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


LAST_STEPS: OrderedDict[str, tuple[int, int]] = OrderedDict()  # session -> (step, steps) last reported, for Stop
KEEP_SESSIONS = 256  # the most sessions whose last step is remembered


def stream(plan: Plan, progress: Callable[..., Any] | None, session: str | None = None) -> Iterator[Step | Done]:
    """Run a plan on the GPU and report progress in one line (the user's step count, time elapsed and
    left, restarts in words); times this GPU's steps for the next plans and the time left."""
    config, started, last_at = plan.config, time.perf_counter(), None
    full_batch_seconds: list[float] = []  # time between steps that ran every sample
    step_seconds: list[float] = []
    planned = planning.evaluation_seconds(plan)
    restarts: tuple[int, ...] = ()
    restart_note = ""
    for update in drained(run_translation(plan)):
        if isinstance(update, Step):
            now = time.perf_counter()
            if last_at is not None:
                step_seconds.append(now - last_at)
                if update.batch == config.samples:
                    full_batch_seconds.append(now - last_at)
            last_at = now
            per_step = sum(step_seconds) / len(step_seconds) if step_seconds else planned
            line = progress_line(update.step, config, now - started, (update.total - update.step) * per_step)
            new = [k for k, n in enumerate(update.sample_restarts) if n > (restarts[k] if k < len(restarts) else 0)]
            if new:  # said until the next restart: a flash between two steps would go unread
                restart_note = "".join(f" · {restart_line(k, update.sample_restarts[k], config.max_restarts)}" for k in new)
            restarts = update.sample_restarts or restarts
            line += restart_note
            if session is not None:
                LAST_STEPS[session] = (user_step(update.step, config), config.steps)
                LAST_STEPS.move_to_end(session)
                while len(LAST_STEPS) > KEEP_SESSIONS:
                    LAST_STEPS.popitem(last=False)
            if progress is not None:
                progress(update.step / update.total, desc=line)
        else:
            planning.learn_speed(plan, full_batch_seconds)
            if (missing := config.samples - len(update.results)) > 0:
                gr.Warning(f"{missing} of {config.samples} samples did not finish within the GPU time; "
                           "the finished ones are shown")
        yield update
