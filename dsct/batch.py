"""Resumable batches: the results log read back, what a resumed run redoes, crash-safe writes.

``python -m dsct batch`` appends one JSON row per output to ``results.jsonl`` as it goes, so a run
that is killed loses at most the row it was writing. The next run reads the log back
(``read_log``: good rows, plus the lines it could not use), decides which sources are done
(``plan_resume``, a pure function), and rewrites the log without the rest (``write_log``). Every
file is written through a temporary name in its own folder and ``os.replace``, so an interrupt
leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, NamedTuple

from PIL import Image

from .errors import DSCTError

__all__ = [
    "LOG_NAME", "CSV_NAME", "LogProblem", "ResumePlan", "write_atomic", "image_format", "save_image",
    "read_log", "parse_log", "plan_resume", "write_log", "append_rows", "write_csv", "output_stems",
]

LOG_NAME, CSV_NAME = "results.jsonl", "results.csv"
TEMP_SUFFIX = ".partial"  # ".NAME.PID.partial": hidden, and no image suffix, so never read as a source
OUTPUT_FIELDS: dict[str, type] = {"source": str, "output": str, "rank": int}
ERROR_FIELDS: dict[str, type] = {"source": str, "error": str}
_SOURCE_FIRST = re.compile(rb'\{"source": ("(?:[^"\\]|\\.)*")')  # how json.dumps starts a row we wrote


class LogProblem(NamedTuple):
    """A log line that is not a usable row: its number (from 1), why, and its source when legible."""

    line: int
    reason: str
    source: str | None


class ResumePlan(NamedTuple):
    """What a resumed batch keeps in its log and what it translates (again)."""

    rows: list[dict]  # the rows to keep: the latest attempt of every source that is not redone
    todo: list[str]  # source names to translate, in input order
    translated: int  # sources among the inputs already done, every output present
    failed: int  # sources among the inputs recorded as errors and not retried


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file beside it, then rename it into place, so that a kill,
    a full disk or Ctrl-C leaves the previous file (or none), never a truncated one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes reach the disk before the name does (power loss)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise DSCTError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def image_format(path: Path) -> str:
    """PIL's format name for the suffix of ``path``; checked before any work is done."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise DSCTError(f"cannot write {path}: {path.suffix or 'no suffix'} is not an image format PIL can write "
                        "(use .png, .jpg or .webp)")
    return fmt


def save_image(image: Image.Image, path: Path) -> None:
    """Save ``image`` atomically in the format its suffix names."""
    fmt = image_format(path)
    try:
        write_atomic(path, lambda fh: image.save(fh, format=fmt))
    except ValueError as e:  # a mode the format cannot hold
        raise DSCTError(f"cannot write {path}: {e}") from e


def _legible_source(line: bytes) -> str | None:
    """The source of a row cut short, when its first field survived."""
    match = _SOURCE_FIRST.match(line)
    return json.loads(match.group(1)) if match else None


def _valid(value: object, kind: type) -> bool:
    """A non-empty string, or a rank (an int from 1; JSON true is not one)."""
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return isinstance(value, str) and value != ""


def _row_problem(row: object) -> str | None:
    """Why a parsed line is not a row the batch wrote, or None."""
    if not isinstance(row, dict):
        return "not a JSON object"
    fields = ERROR_FIELDS if "error" in row else OUTPUT_FIELDS
    bad = [k for k, kind in fields.items() if not _valid(row.get(k), kind)]
    return f"missing or invalid {', '.join(bad)}" if bad else None


def parse_log(lines: Iterable[bytes]) -> tuple[list[dict], list[LogProblem]]:
    """The usable rows of a results log, and each line that is not one (cut short, not JSON, a field missing)."""
    rows: list[dict] = []
    problems: list[LogProblem] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            problems.append(LogProblem(number, "cut short or not JSON", _legible_source(line)))
            continue
        if reason := _row_problem(row):
            source = row.get("source") if isinstance(row, dict) else None
            problems.append(LogProblem(number, reason, source if isinstance(source, str) else None))
        else:
            rows.append(row)
    return rows, problems


def read_log(path: Path) -> tuple[list[dict], list[LogProblem]]:
    """``parse_log`` of the file at ``path``; no file is an empty log."""
    try:
        return parse_log(path.read_bytes().splitlines()) if path.exists() else ([], [])
    except OSError as e:
        raise DSCTError(f"cannot read {path}: {e.strerror or e}") from e


def _latest_attempts(rows: Iterable[dict]) -> dict[str, list[dict]]:
    """Each source's rows from its last attempt: an attempt is one error row, or output rows of
    increasing rank (how the batch writes them), so rows that an older run left are dropped."""
    attempts: dict[str, list[dict]] = {}
    for row in rows:
        current = attempts.get(row["source"])
        if current is None or "error" in row or "error" in current[-1] or row["rank"] <= current[-1]["rank"]:
            attempts[row["source"]] = [row]
        else:
            current.append(row)
    return attempts


def plan_resume(
    rows: Sequence[dict], problems: Sequence[LogProblem], sources: Sequence[str], present: Collection[str], *,
    samples: int, retry_errors: bool = False,
) -> ResumePlan:
    """Decide which ``sources`` are done and which rows stay in the log.

    A source is done when its latest attempt is an error (unless ``retry_errors``), or has rows for
    ranks 1..``samples`` whose outputs are all in ``present`` (file names in the output folder),
    and no unusable log line names it. Every other source is redone and its old rows dropped, so
    no source ever has two sets of rows. Rows of sources no longer in the input folder are kept.
    """
    suspect = {p.source for p in problems if p.source is not None}
    ranks = set(range(1, samples + 1))
    done: set[str] = set()
    failed: set[str] = set()
    attempts = _latest_attempts(rows)
    for source, attempt in attempts.items():
        if source in suspect:
            continue
        if "error" in attempt[0]:
            if not retry_errors:
                failed.add(source)
        elif ranks <= {r["rank"] for r in attempt} and all(r["output"] in present for r in attempt):
            done.add(source)
    redo = [s for s in sources if s not in done and s not in failed]
    redo_set = set(redo)
    kept = [row for source, attempt in attempts.items() if source not in redo_set for row in attempt]
    inputs = set(sources)
    return ResumePlan(kept, redo, len(done & inputs), len(failed & inputs))


def _jsonl(rows: Iterable[dict]) -> Iterator[bytes]:
    return ((json.dumps(row) + "\n").encode() for row in rows)


def write_log(path: Path, rows: Sequence[dict]) -> None:
    """Rewrite the log with exactly ``rows``, atomically (it then ends with a whole line)."""
    write_atomic(path, lambda fh: fh.writelines(_jsonl(rows)))


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Add one source's rows to the log in one write; a kill mid-write cuts only the last line."""
    try:
        with path.open("ab") as fh:
            fh.write(b"".join(_jsonl(rows)))
    except OSError as e:
        raise DSCTError(f"cannot write {path}: {e.strerror or e}") from e


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """The log as a table (loss terms last), written atomically."""
    names = sorted({k for row in rows for k in row}, key=lambda k: (k.startswith("loss_"), k))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=names)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, lambda fh: fh.write(text.getvalue().encode()))


def output_stems(names: Sequence[str]) -> dict[str, str]:
    """Source name -> output stem: the file's stem, or ``stem.ext`` where two sources share a stem."""
    stems = Counter(Path(n).stem for n in names)
    return {n: Path(n).stem if stems[Path(n).stem] == 1 else f"{Path(n).stem}.{Path(n).suffix.lstrip('.')}" for n in names}
