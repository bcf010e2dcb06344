"""What the page shows of pictures: captions with seed and scores, gallery rows, the before/after
pair, which result the user selected, and the one photo every tab shares."""

from __future__ import annotations

import filecmp
import os
from collections.abc import Sequence
from typing import Any

import gradio as gr
from PIL import Image

from dsct import DSCTError, Result
from dsct.classes import class_name
from dsct.images import fit_to, load_image

from .words import METHOD_NAMES


def caption(result: Result, method: str) -> str:
    """Rank, seed and method, then the scores, then anything to know, each on its own line (the page
    shows captions whole, wrapped at the line breaks)."""
    lines = [f"#{result.rank} · seed {result.seed} · {METHOD_NAMES[method]}",
             f"content {result.content_score:.3f} · target {result.target_score:.3f}"]
    extra = ([f"class {class_name(result.class_label)}"] if result.class_label is not None else [])
    extra += ([f"restarts {result.restarts}"] if result.restarts else []) + ([result.note] if result.note else [])
    if result.tiny:
        extra.append("tiny model: not meaningful")
    if extra:
        lines.append(" · ".join(extra))
    return "\n".join(lines)


def gallery_rows(results: Sequence[Result], method: str) -> list[tuple[Any, str]]:
    return [(r.image, caption(r, method)) for r in results]


def result_path(gallery: Any, index: int) -> str | None:
    """The file of result ``index`` (clamped), for "use as the source"."""
    if not gallery:
        return None
    item = gallery[min(max(index, 0), len(gallery) - 1)]
    image = item[0] if isinstance(item, (tuple, list)) else item
    return str(getattr(image, "path", image))


def before_after(source: str | None, gallery: Any, index: int = 0) -> tuple[Image.Image, Image.Image] | None:
    """Result ``index`` (the best by default, else the one selected) beside its source, at the
    result's size, for the before/after slider."""
    shown = result_path(gallery, index)
    if not source or shown is None:
        return None
    try:
        with Image.open(shown) as opened:
            after = opened.convert("RGB")
        before = fit_to(load_image(source, name="source image"), *after.size)  # as the model saw it
    except (DSCTError, OSError):
        return None
    return before, after


def show_selected(source: str | None, gallery: Any, event: gr.SelectData) -> tuple[int, Any]:
    """A click on a result: remember it (for "use as the source") and show it in the before/after slider."""
    return event.index, before_after(source, gallery, event.index)


def mirror_photo(path: str | None, other: str | None) -> Any:
    """The photo one tab shows, for another tab: unchanged (gr.skip) when that tab already shows the
    same file, so two tabs that mirror each other stop after one round."""
    same = path == other or bool(path and other and os.path.isfile(path) and os.path.isfile(other)
                                 and filecmp.cmp(path, other, shallow=False))
    return gr.skip() if same else path
