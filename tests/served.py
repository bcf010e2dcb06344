"""The app served on a free local port for gradio_client tests, closed after use."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gradio_client import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import app  # noqa: E402 — app.py lives at the repository root


@contextlib.contextmanager
def served(models: Mapping[str, Any], defaults: Mapping[str, Any]) -> Iterator[Client]:
    demo = app.build_demo(models, defaults=defaults)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.LAUNCH_KWARGS)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()
