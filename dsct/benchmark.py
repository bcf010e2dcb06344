"""The files of an evaluation: reference statistics (ours, and FlexIT's published one), the classes
file, and FlexIT's benchmark list turned into what ``dsct batch`` and ``dsct eval`` read.

FlexIT (Couairon et al., CVPR 2022; github.com/facebookresearch/SemanticImageTranslation) publishes
``dataset/queries.csv`` (one row per query: an ImageNet validation image, its class and the class to
turn it into) and ``dataset/inception_stats_256.pt`` (Inception means of ImageNet train, globally and
per class, keyed by the ImageNet class index). Statistics files are read with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import torch

from . import eval as metrics
from .batch import write_atomic
from .errors import DSCTError

__all__ = ["STATS_FORMAT", "save_stats", "read_stats", "read_classes", "flexit_prompts"]

STATS_FORMAT = "dsct-reference-stats-1"


def save_stats(path: Path, stats: metrics.RefStats) -> None:
    """Reference statistics as a plain dict of tensors, strings and ints (readable with weights_only=True)."""
    payload = {"format": STATS_FORMAT, "mean": stats.mean, "class_means": stats.class_means, "counts": stats.counts}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, lambda fh: fh.write(buffer.getvalue()))


def read_stats(path: Path) -> metrics.RefStats:
    """Our statistics file, or FlexIT's published ``inception_stats_256.pt`` (keys mean / std / classwise,
    classes by ImageNet index), read with ``weights_only=True``: no pickled code runs."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DSCTError(f"cannot read the statistics file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if isinstance(data, dict) and data.get("format") == STATS_FORMAT:
        return metrics.RefStats(data["mean"].double(), {str(k): v.double() for k, v in data["class_means"].items()},
                                data.get("counts"))
    if isinstance(data, dict) and "mean" in data and isinstance(data.get("classwise"), dict):
        return metrics.RefStats(data["mean"].double(), {str(k): v["mean"].double() for k, v in data["classwise"].items()}, None)
    raise DSCTError(f"{path} is neither a statistics file of `dsct eval stats` nor FlexIT's inception_stats_256.pt")


def _read_csv(path: Path, what: str) -> list[dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DSCTError(f"cannot read the {what} {path}: {getattr(e, 'strerror', None) or e}") from e
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DSCTError(f"cannot read the {what} {path}: {e}") from e


def read_classes(path: Path) -> dict[str, str]:
    """A classes file: columns ``source,class`` (or ``output,class``): file name -> target class label."""
    rows = _read_csv(path, "classes file")
    key = next((k for k in ("source", "output") if rows and k in rows[0]), None)
    if not rows or key is None or "class" not in rows[0]:
        raise DSCTError(f"{path}: a classes file needs a header source,class (or output,class) and one line per image")
    return {r[key].strip(): r["class"].strip() for r in rows if r.get(key, "").strip()}


def flexit_prompts(queries: Path, val_dir: Path, out: Path, *, split: str = "test", limit: int | None = None) -> int:
    """FlexIT's ``queries.csv`` (id, path, source, source_id, target, target_id, is_test) to a dsct benchmark
    folder: ``sources/ID.EXT`` (links to the ImageNet val images), ``prompts.csv`` for ``dsct batch
    --prompts`` and ``classes.csv`` (target class = FlexIT's ImageNet index, as its statistics file keys it).
    Returns the number of queries written."""
    rows = _read_csv(queries, "queries file")
    needed = {"path", "source", "target", "target_id", "is_test"}
    if not rows or not needed <= set(rows[0]):
        raise DSCTError(f"{queries}: not FlexIT's queries.csv (needs columns {', '.join(sorted(needed))})")
    # FlexIT reads the file with pandas and no index column, so a query's id (the name of its output,
    # {id}.png, and the row its eval looks up) is its row position in the whole file, not the first column
    wanted = {"test": ("True",), "dev": ("False",), "all": ("True", "False")}[split]
    rows = [(position, r) for position, r in enumerate(rows) if r["is_test"] in wanted][:limit]
    (out / "sources").mkdir(parents=True, exist_ok=True)
    prompts, classes = [["source", "source_text", "text"]], [["source", "class"]]
    for position, r in rows:
        image = val_dir / r["path"]
        if not image.is_file():
            raise DSCTError(f"{image} not found: --imagenet-val must be the ImageNet validation folder with its class folders")
        name = f"{position}{image.suffix}"
        link = out / "sources" / name
        if not link.exists():
            try:
                link.symlink_to(image.resolve())
            except OSError:
                shutil.copyfile(image, link)
        prompts.append([name, r["source"], r["target"]])
        classes.append([name, r["target_id"]])
    for file_name, table in (("prompts.csv", prompts), ("classes.csv", classes)):
        text = io.StringIO(newline="")
        csv.writer(text, lineterminator="\n").writerows(table)
        write_atomic(out / file_name, lambda fh, t=text.getvalue(): fh.write(t.encode()))
    return len(rows)


