"""What the page shows of finished samples: captions with seed and scores, gallery rows, the
before/after pair, and which result the user selected."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr
from PIL import Image

from dsct import DSCTError, Result
from dsct.images import fit_to, load_image


def caption(result: Result) -> str:
    parts = [f"#{result.rank}", f"seed {result.seed}", f"content {result.content_score:.3f}",
             f"target {result.target_score:.3f}"]
    if result.restarts:
        parts.append(f"restarts {result.restarts}")
    if result.note:
        parts.append(result.note)
    if result.tiny:
        parts.append("tiny model: not meaningful")
    return " · ".join(parts)


def gallery_rows(results: Sequence[Result]) -> list[tuple[Any, str]]:
    return [(r.image, caption(r)) for r in results]


def result_path(gallery: Any, index: int) -> str | None:
    """The file of result ``index`` (clamped), for "use as the source"."""
    if not gallery:
        return None
    item = gallery[min(max(index, 0), len(gallery) - 1)]
    image = item[0] if isinstance(item, (tuple, list)) else item
    return str(getattr(image, "path", image))


def before_after(source: str | None, gallery: Any) -> tuple[Image.Image, Image.Image] | None:
    """The best result beside its source, at the result's size, for the before/after slider."""
    best = result_path(gallery, 0)
    if not source or best is None:
        return None
    try:
        with Image.open(best) as opened:
            after = opened.convert("RGB")
        before = fit_to(load_image(source, name="source image"), *after.size)  # as the model saw it
    except (DSCTError, OSError):
        return None
    return before, after


def selected_index(event: gr.SelectData) -> int:
    return event.index
