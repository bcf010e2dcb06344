"""Work counters: what the networks really ran, read by hooks on the real modules.

Counts are taken where the work happens, not by reading the sampler: a forward hook on each
watched module counts calls and images (the first input's batch size), and for every forward
whose outputs need a gradient it registers an autograd hook on those outputs
(``torch.autograd.graph.register_multi_grad_hook``, mode "any") that counts one backward when the
gradient reaches them. Module hooks do not see a block recomputed by gradient checkpointing, so
the UNet's attention blocks are counted by wrapping their ``forward`` (every execution counts).

Also here: host synchronisations on CUDA (``torch.cuda.set_sync_debug_mode``) and PIL images
created (a wrapped ``PIL.Image.Image.__init__``), both counted between ``start()`` and ``stop()``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dsct.hub import Models
from dsct.unet import AttentionBlock

__all__ = ["WorkCounter", "watch_models", "attention_blocks", "SyncCounter", "PilCounter", "OpCounter", "params_with_grad"]


def _batch(args: tuple) -> int:
    first = next((a for a in tree_leaves(args) if isinstance(a, Tensor)), None)
    return 0 if first is None or first.ndim == 0 else int(first.shape[0])


class WorkCounter:
    """Forward calls, images and backward passes of named modules; ``counts`` is a Counter.

    Keys: ``<name>.forward``, ``<name>.images``, ``<name>.backward``, and ``<name>.forward_grad`` /
    ``<name>.images_grad`` for the forwards whose outputs need a gradient (the rest ran without grad,
    e.g. under ``torch.no_grad``). Use as a context manager
    (or call ``remove``) so the hooks do not outlive the measurement.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._handles: list = []
        self._restore: list = []

    def watch(self, name: str, module: nn.Module) -> None:
        def on_forward(mod: nn.Module, args: tuple, out: object) -> None:
            self.counts[f"{name}.forward"] += 1
            self.counts[f"{name}.images"] += _batch(args)
            needs_grad = [t for t in tree_leaves(out) if isinstance(t, Tensor) and t.requires_grad]
            if needs_grad:
                self.counts[f"{name}.forward_grad"] += 1  # this forward keeps a graph: a backward may follow
                self.counts[f"{name}.images_grad"] += _batch(args)
                torch.autograd.graph.register_multi_grad_hook(needs_grad, on_backward, mode="any")

        def on_backward(grad: Tensor) -> None:
            self.counts[f"{name}.backward"] += 1

        self._handles.append(module.register_forward_hook(on_forward))

    def watch_runs(self, name: str, module: nn.Module) -> None:
        """Count every execution of ``module.forward`` as ``<name>.forward``, recomputations included.

        Module hooks do not fire when ``torch.utils.checkpoint`` recomputes a block in backward, so
        this wraps the instance's ``forward`` instead (``remove`` restores it).
        """
        forward = module.forward

        def counted(*args, **kwargs):
            self.counts[f"{name}.forward"] += 1
            return forward(*args, **kwargs)

        module.forward = counted
        self._restore.append(lambda: delattr(module, "forward"))

    def get(self, key: str) -> int:
        return self.counts[key]

    def reset(self) -> None:
        self.counts.clear()

    def snapshot(self) -> Counter[str]:
        return Counter(self.counts)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()

    def __enter__(self) -> WorkCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def watch_models(models: Models, *, attention_runs: bool = True) -> WorkCounter:
    """Hooks on the UNet, the DINO ViT (wrapper and patch embedding) and each CLIP model's image
    tower (``visual``: one call per ``encode_image``), named ``clip:<model>``; every run of a UNet
    attention block (recomputations included) as ``unet_attention`` — unless ``attention_runs`` is
    False: under ``torch.compile`` that wrapper would be traced, and its counts guarded on."""
    counter = WorkCounter()
    counter.watch("unet", models.unet)
    for block in models.unet.modules() if attention_runs else ():
        if isinstance(block, AttentionBlock):
            counter.watch_runs("unet_attention", block)
    counter.watch("vit", models.vit)
    counter.watch("vit_patch_embed", models.vit.vit.patch_embed)  # one per real ViT pass, whoever calls it
    if models.clip is not None:
        for name, model in zip(models.clip.names, models.clip.models):
            counter.watch(f"clip:{name}", model.visual)
    return counter


def attention_blocks(unet: nn.Module) -> int:
    return sum(isinstance(m, AttentionBlock) for m in unet.modules())


class SyncCounter:
    """Counts CUDA host synchronisations between ``start()`` and ``stop()`` (returns the count).

    Uses ``torch.cuda.set_sync_debug_mode("warn")``, which warns at every synchronising call
    (``.item()``, ``.tolist()``, blocking copies between host and device). On CPU ``stop`` gives -1.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._catcher: warnings.catch_warnings | None = None
        self._caught: list = []
        self._previous = 0

    def start(self) -> None:
        if not self.cuda or self._catcher is not None:
            return
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        self._previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> int:
        if self._catcher is None:
            return -1 if not self.cuda else 0
        torch.cuda.set_sync_debug_mode(self._previous)
        self._catcher.__exit__(None, None, None)
        self._catcher = None
        return sum("synchroniz" in str(w.message) for w in self._caught)


class PilCounter:
    """Counts PIL images created between ``start()`` and ``stop()`` (wraps ``Image.Image.__init__``)."""

    def __init__(self) -> None:
        self.count = 0
        self._original = None

    def start(self) -> None:
        if self._original is not None:
            return
        original = self._original = Image.Image.__init__

        def counted(image, *args, **kwargs):
            self.count += 1
            original(image, *args, **kwargs)

        Image.Image.__init__ = counted

    def stop(self) -> int:
        if self._original is not None:
            Image.Image.__init__ = self._original
            self._original = None
        return self.count


class OpCounter(TorchDispatchMode):
    """Counts ATen operators dispatched between ``start()`` and ``stop()`` (forward and backward).

    Ops are seen below autograd, after composite ops decompose: about one kernel launch each on a
    GPU, so the count tells how much per-op host overhead a step pays (the same at any width).
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))

    def start(self) -> None:
        self.__enter__()

    def stop(self) -> int:
        self.__exit__(None, None, None)
        return self.count


def params_with_grad(models: Models) -> tuple[int, int]:
    """(parameters with a .grad, parameters with requires_grad) over every loaded network."""
    nets = [m for m in (models.unet, models.vit, models.clip, models.arcface) if m is not None]
    params = [p for net in nets for p in net.parameters()]
    return sum(p.grad is not None for p in params), sum(p.requires_grad for p in params)
