"""The output folder of `pam describe-dataset`: one row per region in part files, a journal that makes a killed
run lose only the images in flight, and `_SUCCESS` once every image of the source has its rows.

Layout of DIR:
- `part-<run>-<seq>.parquet` (or `.jsonl`): the rows, each file written whole (temporary file, then rename)
  with the one explicit schema of `output_schema`, so `pyarrow.dataset.dataset(DIR)` reads them as one table.
- `_journal/<run>-<seq>.jsonl`: the images finished since the last part, one line per image holding its rows,
  flushed per image and fsync'd every few seconds. Every `part_images` images, and when the run ends (Ctrl-C
  too), the journal becomes `part-<run>-<seq>` and a new journal starts.
- `_dataset.json`: the settings the rows were made with; a run with other settings is refused.
- `_lock`: held while a run writes (a second run on DIR is refused); `_SUCCESS`: written last.

On open, journals that a killed run left are recovered: complete lines (a torn last line is dropped) become the
part of the same name; if that part exists the journal had been converted already and is only removed. So a
finished image is in exactly one part, and parts are never rewritten. Names starting with `_` or `.` are what
pyarrow's dataset discovery skips.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from ..errors import DatasetError
from ..io import write_atomic
from ..rle import mask_to_rle, to_compressed
from ..stream import StreamResult
from .sources import SourceRow

FORMATS = ("parquet", "jsonl")
PART_IMAGES = 256  # images per part file
FSYNC_SECONDS = 2.0  # how often the journal is fsync'd (by a background thread) while it has unsynced lines
FIELD_COLUMNS = ("label", "definition")  # RegionResult.fields that tasks parse
JOURNAL_DIR = "_journal"
SETTINGS_FILE = "_dataset.json"
SUCCESS_FILE = "_SUCCESS"
LOCK_FILE = "_lock"


def text_column(task_key: str) -> str:
    return f"text_{task_key}"


def output_columns(task_keys: Sequence[str]) -> list[str]:
    return ["id", "image", "region", "prompt", "box", "mask_rle", "mask_score", "object_score", "lang", "model",
            *map(text_column, task_keys), *FIELD_COLUMNS, "concept", "concept_score", "error"]


def output_schema(task_keys: Sequence[str]):
    """The pyarrow schema of every part: the same columns and types whatever a part happens to hold (a part of
    failed images only has null texts, still typed as strings)."""
    import pyarrow as pa

    types = {"id": pa.string(), "image": pa.string(), "region": pa.int32(), "prompt": pa.string(),
             "box": pa.list_(pa.float64()), "mask_rle": pa.string(), "mask_score": pa.float64(),
             "object_score": pa.float64(), "lang": pa.string(), "model": pa.string(), "concept_score": pa.float64(),
             "error": pa.string()}
    return pa.schema([pa.field(name, types.get(name, pa.string()), nullable=name not in ("id", "image"))
                      for name in output_columns(task_keys)])


def image_rows(result: StreamResult, row: SourceRow, model: str, lang: str, task_keys: Sequence[str]) -> list[dict]:
    """The output rows of one image: one per region; one with `error` set for a failed image; one with a null
    `region` for an image in which the automatic mode found nothing (so that the image counts as finished)."""
    columns = output_columns(task_keys)
    base = dict.fromkeys(columns) | {"id": row.id, "image": row.image, "lang": lang, "model": model}
    if not result.ok:
        return [base | {"error": result.error}]
    if not result.regions:
        return [base]
    rows = []
    for region in result.regions:
        height, width = region.mask.shape
        rle = to_compressed(mask_to_rle(region.mask), height, width)
        # a region SAM 3 found for a --find concept records the concept as its prompt
        prompt = {"find": region.concept} if region.concept is not None else row.prompt(region.index)
        rows.append(base | {
            "region": region.index, "prompt": json.dumps(prompt, ensure_ascii=False),
            "concept": region.concept, "concept_score": region.concept_score,
            "box": list(region.box) if region.box is not None else None, "mask_rle": json.dumps(rle),
            "mask_score": region.mask_score, "object_score": region.object_score, "lang": region.lang,
            **{text_column(key): text for key, text in region.texts.items()},
            **{key: region.fields[key] for key in FIELD_COLUMNS if key in region.fields}})
    return rows


class DatasetOutput:
    """Writes finished images to DIR durably and without duplicates; see the module docstring.

    >>> with DatasetOutput(out, task_keys, "parquet", settings) as output:
    ...     todo = [i for i in ids if i not in output.finished]
    ...     output.add(image_id, rows)   # for each finished image
    ... output.succeed(ids)              # after the with block: _SUCCESS if every id has rows
    """

    def __init__(self, folder: Path, task_keys: Sequence[str], fmt: str, settings: dict,
                 part_images: int = PART_IMAGES):
        if fmt not in FORMATS:
            raise DatasetError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
        if part_images < 1:
            raise DatasetError(f"images per part must be >= 1, got {part_images}")
        self.folder = Path(folder)
        self.task_keys = list(task_keys)
        self.format = fmt
        self.settings = json.loads(json.dumps({"format": fmt, **settings}))  # as it reads back from JSON
        self.part_images = part_images
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        self.finished: set[str] = set()  # ids with rows in a part or in this run's journal
        self.recovered = 0  # images recovered from killed runs' journals
        self.added = 0  # images this run has written
        self._seq = 0
        self._journal = None
        self._journal_images = 0
        self._unsynced = False
        self._journal_io = threading.Lock()  # the journal between `add` and the fsync thread
        self._stop_syncing = threading.Event()
        self._syncer: Optional[threading.Thread] = None
        self._lock = None

    # ------------------------------------------------------------------------------------------ open / close

    def __enter__(self) -> "DatasetOutput":
        if self.format == "parquet":
            import pyarrow.parquet  # noqa: F401  (now, not during the first conversion, which Ctrl-C may hit)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._check_settings()
            (self.folder / SUCCESS_FILE).unlink(missing_ok=True)  # written again once every image has rows
            for stale in self.folder.glob(".part-*.tmp"):  # a part a killed run was writing
                stale.unlink()
            for journal in sorted((self.folder / JOURNAL_DIR).glob("*.jsonl")):
                self.recovered += self._convert(journal)
            for part in self.parts():
                self.finished.update(self._part_ids(part))
        except BaseException:
            self._release_lock()
            raise
        self._syncer = threading.Thread(target=self._sync_journal, name="pam-journal-fsync", daemon=True)
        self._syncer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """The current journal becomes a part; the lock is released. Safe to call twice."""
        self._stop_syncing.set()
        try:
            self._end_journal()
            journals = self.folder / JOURNAL_DIR
            if journals.is_dir() and not any(journals.iterdir()):
                journals.rmdir()
        finally:
            self._release_lock()

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob(f"part-*.{self.format}"))

    def succeed(self, ids: Iterable[str]) -> bool:
        """`_SUCCESS`, when every id of the source has its rows in a part (call after `close`)."""
        if self._journal is not None or not all(i in self.finished for i in ids):
            return False
        write_atomic(self.folder / SUCCESS_FILE, lambda tmp: Path(tmp).write_text(""))
        return True

    # ------------------------------------------------------------------------------------------------ write

    def add(self, image_id: str, rows: list[dict]) -> None:
        """One finished image's rows, in the journal before this returns (flushed; fsync'd within
        FSYNC_SECONDS)."""
        if image_id in self.finished:
            raise DatasetError(f"image {image_id!r} already has rows in {self.folder}")
        line = json.dumps({"id": image_id, "rows": rows}, ensure_ascii=False) + "\n"
        with self._journal_io:
            if self._journal is None:
                path = self.folder / JOURNAL_DIR / f"{self.run_id}-{self._seq:05d}.jsonl"
                path.parent.mkdir(exist_ok=True)
                self._journal = open(path, "x", encoding="utf-8")
            self._journal.write(line)
            self._journal.flush()
            self._unsynced = True
        self.finished.add(image_id)
        self.added += 1
        self._journal_images += 1
        if self._journal_images >= self.part_images:
            self._end_journal()

    def _end_journal(self) -> None:
        """The journal becomes a part. Interrupted (Ctrl-C during the conversion), it is still the current one,
        so `close` converts it; a kill leaves it to the next run's recovery."""
        if self._journal is None:
            return
        with self._journal_io:
            if not self._journal.closed:
                self._journal.flush()
                os.fsync(self._journal.fileno())
                self._journal.close()
                self._unsynced = False
        self._convert(Path(self._journal.name))
        self._journal = None
        self._seq += 1
        self._journal_images = 0

    def _sync_journal(self) -> None:
        """The fsync thread: what `add` flushed reaches the disk within FSYNC_SECONDS, however slow images are."""
        while not self._stop_syncing.wait(FSYNC_SECONDS):
            with self._journal_io:
                if self._unsynced and self._journal is not None and not self._journal.closed:
                    try:
                        os.fsync(self._journal.fileno())
                    except OSError:  # reported where it matters: the fsync when the journal ends
                        pass
                    self._unsynced = False

    def _convert(self, journal: Path) -> int:
        """Journal -> the part of the same name (unless it exists: then the journal was converted already), then
        the journal is removed. Returns the images converted."""
        part = self.folder / f"part-{journal.stem}.{self.format}"
        images = 0
        if not part.exists():
            rows, images = _journal_rows(journal)
            if rows:
                write_atomic(part, lambda tmp: self._write_part(Path(tmp), rows))
                _fsync_dir(self.folder)
        journal.unlink(missing_ok=True)  # missing: removed by a conversion that was interrupted just after
        return images

    def _write_part(self, path: Path, rows: list[dict]) -> None:
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows, schema=output_schema(self.task_keys)), path,
                           compression="zstd")
        else:
            columns = output_columns(self.task_keys)
            with open(path, "w", encoding="utf-8") as out:
                for row in rows:
                    out.write(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n")
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ----------------------------------------------------------------------------------------- read back

    def _part_ids(self, part: Path) -> list[str]:
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                return pq.read_table(part, columns=["id"]).column("id").to_pylist()
            with open(part, encoding="utf-8") as lines:
                return [json.loads(line)["id"] for line in lines if line.strip()]
        except Exception as exc:  # pyarrow and json raise many types on a damaged file
            raise DatasetError(f"cannot read part file {part} ({exc}); parts are written whole, so something "
                               "else changed it: move it away to describe its images again") from None

    def _check_settings(self) -> None:
        path = self.folder / SETTINGS_FILE
        if not path.exists():
            if self.parts():
                raise DatasetError(f"{self.folder} holds part files but no {SETTINGS_FILE}: not an output folder "
                                   "of pam describe-dataset, or a damaged one; use another --out")
            write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(self.settings, indent=2) + "\n",
                                                                 encoding="utf-8"))
            return
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read {path}: {exc}") from None
        changed = [f"{key}: {before.get(key)!r} then, {self.settings.get(key)!r} now"
                   for key in sorted(set(before) | set(self.settings)) if before.get(key) != self.settings.get(key)]
        if changed:
            raise DatasetError(f"{self.folder} holds rows made with other settings ({'; '.join(changed)}); run "
                               "with the same settings to resume, or choose another --out")

    # --------------------------------------------------------------------------------------------- lock

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, one run at a time is up to the user
            return
        self._lock = open(self.folder / LOCK_FILE, "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise DatasetError(f"another pam describe-dataset run is writing {self.folder}") from None

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None


def _journal_rows(journal: Path) -> tuple[list[dict], int]:
    """The rows of a journal's complete lines; a last line cut short by a kill is dropped."""
    lines = journal.read_bytes().split(b"\n")
    rows: list[dict] = []
    complete = lines[:-1]  # after the last newline: empty, or a line the kill cut short
    for number, line in enumerate(complete, 1):
        try:
            rows += json.loads(line.decode("utf-8"))["rows"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"journal {journal} line {number} is damaged ({exc}); move the journal away to "
                               "describe its images again") from None
    return rows, len(complete)


def _fsync_dir(folder: Path) -> None:
    """Makes a rename in `folder` durable (where the platform can open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
