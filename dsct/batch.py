"""Resumable batches: the results log read back, what a resumed run redoes, crash-safe writes.

``python -m dsct batch`` appends one JSON row per output to ``results.jsonl`` as it goes, so a run
that is killed loses at most the row it was writing. The next run reads the log back
(``read_log``: good rows, plus the lines it could not use), decides which sources are done
(``plan_resume``, a pure function), and rewrites the log without the rest (``write_log``). Every
file is written through a temporary name in its own folder and ``os.replace``, so an interrupt
leaves the old file or the new one, never half of one.

Under torchrun each rank appends to its own ``results.rankR.jsonl`` (``rank_log``), so that no two
processes (maybe on two machines sharing a folder) append to one file; rank 0 reads them as they
grow for the progress line, folds them into ``results.jsonl`` when the run ends, and the next run
folds in whatever a killed run left. The other ranks' hidden ``.results.rankR.alive`` files
(``rank_beat``) tell rank 0 they are alive, then done. A prompts file (``read_prompts``) gives each
source its own texts or style image.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, NamedTuple

from PIL import Image

from .config import Mode
from .errors import DSCTError

__all__ = [
    "LOG_NAME", "CSV_NAME", "LogProblem", "ResumePlan", "write_atomic", "image_format", "save_image",
    "read_log", "parse_log", "plan_resume", "write_log", "append_rows", "write_csv", "output_stems",
    "PromptRow", "read_prompts", "size_groups", "rank_log", "rank_logs", "rank_beat", "rank_beats", "in_order",
]

LOG_NAME, CSV_NAME = "results.jsonl", "results.csv"
TEMP_SUFFIX = ".partial"  # ".NAME.PID.partial": hidden, and no image suffix, so never read as a source
OUTPUT_FIELDS: dict[str, type] = {"source": str, "output": str, "rank": int}
ERROR_FIELDS: dict[str, type] = {"source": str, "error": str}
PROMPT_COLUMNS: dict[Mode, tuple[str, ...]] = {"text": ("source", "source_text", "text"), "image": ("source", "style")}
_SOURCE_FIRST = re.compile(rb'\{"source": ("(?:[^"\\]|\\.)*")')  # how json.dumps starts a row we wrote


class LogProblem(NamedTuple):
    """A log line that is not a usable row: its number (from 1), why, and its source when legible."""

    line: int
    reason: str
    source: str | None


class PromptRow(NamedTuple):
    """One line of a prompts file: its number (the header is line 1), the source's file name, and
    its prompts by column (``source_text``/``text`` or ``style``), as written."""

    line: int
    source: str
    prompts: dict[str, str]
    problem: str | None = None  # why the line is unusable as written (more cells than columns)


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


def size_groups(sources: Sequence[str], sizes: Mapping[str, Hashable | None], per_batch: int) -> list[list[str]]:
    """Sources in batches of at most ``per_batch`` that share a working size (``sizes``), each batch in
    input order and the batches in the order of their first source; a source whose size is None
    (unreadable) is a batch of its own."""
    groups: list[list[str]] = []
    filling: dict[Hashable, list[str]] = {}
    for source in sources:
        size = sizes.get(source)
        group = filling.get(size) if size is not None else None
        if group is None or len(group) >= per_batch:
            group = []
            groups.append(group)
            if size is not None:
                filling[size] = group
        group.append(source)
    return groups


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


def rank_log(folder: Path, rank: int) -> Path:
    """The log one torchrun rank appends to."""
    return folder / f"results.rank{rank}.jsonl"


def rank_logs(folder: Path) -> list[Path]:
    """The per-rank logs in ``folder`` (left by a run not yet merged), by rank."""
    found = (p for p in folder.glob("results.rank*.jsonl") if p.name[12:-6].isdigit())
    return sorted(found, key=lambda p: int(p.name[12:-6]))


def rank_beat(folder: Path, rank: int) -> Path:
    """The heartbeat file a torchrun rank other than 0 rewrites while it works (``distributed.heartbeat``)."""
    return folder / f".results.rank{rank}.alive"


def rank_beats(folder: Path) -> list[Path]:
    """The heartbeat files in ``folder``, by rank."""
    found = (p for p in folder.glob(".results.rank*.alive") if p.name[13:-6].isdigit())
    return sorted(found, key=lambda p: int(p.name[13:-6]))


def in_order(rows: Iterable[dict], sources: Sequence[str]) -> list[dict]:
    """Rows regrouped by their source's place in ``sources`` (stable within a source): the order one
    process writes them in, whichever ranks wrote them."""
    place = {s: k for k, s in enumerate(sources)}
    return sorted(rows, key=lambda r: place[r["source"]])


def _prompt_mode(path: Path, header: list[str]) -> Mode:
    """The mode a prompts file's columns name, or a one-line reason they name none."""
    use = "use source,source_text,text (text mode) or source,style (image mode)"
    known = {c for columns in PROMPT_COLUMNS.values() for c in columns}
    if {"path", "target", "target_id", "is_test"} <= set(header):
        raise DSCTError(f"{path} is FlexIT's queries.csv: turn it into a prompts file and a sources folder first with "
                        f"python -m dsct eval flexit --queries {path} --imagenet-val DIR -o bench/")
    if unknown := [c for c in header if c not in known]:
        raise DSCTError(f"{path}: unknown column{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}: {use}")
    if twice := sorted({c for c in header if header.count(c) > 1}):
        raise DSCTError(f"{path}: column {', '.join(twice)} given twice: {use}")
    if "style" in header and {"text", "source_text"} & set(header):
        raise DSCTError(f"{path}: mixes text-mode columns (source_text, text) with the image-mode column style: {use}")
    mode: Mode = "image" if "style" in header else "text"
    if missing := [c for c in PROMPT_COLUMNS[mode] if c not in header]:
        raise DSCTError(f"{path}: missing column{'s' * (len(missing) > 1)} {', '.join(missing)}: {use}")
    return mode


def read_prompts(path: Path) -> tuple[Mode, list[PromptRow]]:
    """The mode and rows of a prompts CSV. The file's shape (columns, encoding, sources named twice or
    not at all) is checked here, in one line; a row's prompts are checked by the caller, so that one
    bad row becomes that source's error row."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's BOM is not part of the first column's name
    except (OSError, UnicodeDecodeError) as e:
        reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else e.strerror or e
        raise DSCTError(f"cannot read the prompts file {path}: {reason}") from e
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        records = list(reader)
    except csv.Error as e:
        raise DSCTError(f"cannot read the prompts file {path}: line {reader.line_num}: {e}") from e
    if not records:
        raise DSCTError(f"{path}: empty prompts file: give a header line source,source_text,text (text mode) "
                        "or source,style (image mode) and one line per source")
    header = [c.strip() for c in records[0]]
    mode = _prompt_mode(path, header)
    rows: list[PromptRow] = []
    seen: dict[str, int] = {}
    for line, record in enumerate(records[1:], 2):
        if not any(cell.strip() for cell in record):
            continue  # a blank line
        cells = dict(zip(header, record))
        source = cells.get("source", "").strip()
        if not source:
            raise DSCTError(f"{path}: line {line}: no source file name")
        if Path(source).name != source or source in (".", ".."):  # a path would reach outside the input folder
            raise DSCTError(f"{path}: line {line}: source {source!r} is not a file name (sources are in the input folder)")
        if source in seen:
            raise DSCTError(f"{path}: line {line}: {source} is listed twice (first on line {seen[source]})")
        seen[source] = line
        problem = (f"{len(record)} cells, the header has {len(header)} (quote a text that holds a comma)"
                   if len(record) > len(header) else None)
        rows.append(PromptRow(line, source, {c: cells.get(c, "") for c in PROMPT_COLUMNS[mode][1:]}, problem))
    return mode, rows
