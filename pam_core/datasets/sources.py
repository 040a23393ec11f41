"""A dataset SOURCE (a folder, a glob or a manifest) read into the images and region prompts to describe.

`open_source` picks the kind; `DatasetSource.check` reads every row once, before any model loads, so that a
malformed manifest row (bad JSON, no `image`, a region of the wrong shape, a missing mask file, an id used
twice) is a `DatasetError` naming its file and line, and listing the other malformed rows. What only the image
can tell (that it decodes, that a box lies on it, that a mask has its size) is left to the stream, which gives
such an image an error row. `DatasetSource.rows` reads the rows again, lazily, for the run: a source of a
million rows is never held whole.
"""

from __future__ import annotations

import csv
import glob
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..errors import DatasetError, PAMError
from ..prompts import RegionLike, as_region
from ..stream import StreamItem

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
MANIFEST_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
LISTED_PROBLEMS = 20  # malformed rows whose messages a failed check lists
AUTO_PROMPT = {"auto": True}  # the prompt recorded for regions the stream found itself (--everything)
REGION_KEYS = ("box", "points", "labels", "mask")


@dataclass(frozen=True)
class SourceRow:
    """One image of a source and its region prompts, `None` when the row has none (the stream finds them)."""

    id: str
    image: str  # the path the image is read from
    prompts: Optional[tuple[dict, ...]]  # as given in the source: what the output's `prompt` column records
    # the same with mask files resolved from the manifest's folder; a host may give `Region`s
    regions: Optional[tuple[RegionLike, ...]]

    def stream_item(self, concepts: Optional[Sequence[str]] = None) -> StreamItem:
        """The row for the stream; a row without regions gets `concepts` to find, when given."""
        if self.regions is None:
            return StreamItem(self.image, None, id=self.id, concepts=list(concepts) if concepts else None)
        return StreamItem(self.image, list(self.regions), id=self.id)

    def prompt(self, region: int) -> dict:
        return AUTO_PROMPT if self.prompts is None else self.prompts[region]


class DatasetSource:
    """The rows of a folder, glob or manifest, each with a number that `where` turns into "m.jsonl line 3"."""

    def __init__(self, kind: str, path: str, needs_regions: bool):
        self.kind, self.path = kind, path
        self.needs_regions = needs_regions  # rows without regions are an error (no automatic mode chosen)

    def check(self) -> list[str]:
        """Every row read and checked: the ids in source order. Raises a DatasetError naming the first bad row (a
        repeated id names both rows) and how many more there are, with the messages of the first
        `LISTED_PROBLEMS` in its `problems`, so that a large manifest is fixed in one pass."""
        first_seen: dict[str, int] = {}  # id -> row number; numbers, not messages: a source may be huge
        problems: list[str] = []
        malformed = 0
        for row, number in self._numbered_rows():
            problem = row if isinstance(row, str) else None
            if problem is None and row.id in first_seen:
                problem = (f"id {row.id!r} is already used by {self.where(first_seen[row.id])}; ids must be unique "
                           "(give each row its own 'id')")
            if problem is None:
                first_seen[row.id] = number
                continue
            malformed += 1
            if len(problems) < LISTED_PROBLEMS:
                problems.append(f"{self.where(number)}: {problem}")
        if malformed:
            more = f" (and {malformed - 1} more malformed row(s))" if malformed > 1 else ""
            raise DatasetError(problems[0] + more, tuple(problems) if malformed > 1 else ())
        if not first_seen:
            what = {"folder": f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})", "glob": "no file"}
            raise DatasetError(f"{self.kind} {self.path} holds {what.get(self.kind, 'no rows')}")
        return list(first_seen)

    def rows(self) -> Iterator[SourceRow]:
        """The rows, lazily (call `check` first: a malformed row raises here)."""
        for row, number in self._numbered_rows():
            if isinstance(row, str):
                raise DatasetError(f"{self.where(number)}: {row}")
            yield row

    def where(self, number: int) -> str:
        raise NotImplementedError

    def _numbered_rows(self) -> Iterator[tuple[Union[SourceRow, str], int]]:
        """(the row, or what is wrong with it, and its number), in source order."""
        raise NotImplementedError


class _FileList(DatasetSource):
    """A folder (recursive, image extensions, hidden names skipped) or the files a glob matches; ids are the
    paths relative to the folder, or as the glob wrote them. Such sources have no regions."""

    def __init__(self, kind: str, path: str, needs_regions: bool):
        super().__init__(kind, path, needs_regions)
        if needs_regions:
            raise DatasetError(f"a {kind} source gives images without regions: run with --everything, or list the "
                               "regions in a manifest (JSONL, CSV or Parquet)")

    def _files(self) -> Iterator[tuple[str, str]]:
        """(id, image path) in a stable order."""
        if self.kind == "folder":
            root = Path(self.path)
            found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                           if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(root).parts))
            return ((rel, str(root / rel)) for rel in found)
        return ((path, path) for path in sorted(glob.glob(self.path, recursive=True)) if Path(path).is_file())

    def where(self, number: int) -> str:
        return f"file {number} of {self.kind} {self.path}"

    def _numbered_rows(self) -> Iterator[tuple[Union[SourceRow, str], int]]:
        for number, (image_id, image) in enumerate(self._files(), 1):
            yield SourceRow(image_id, image, None, None), number


class _Manifest(DatasetSource):
    """JSONL, CSV or Parquet, one row per image: `image` (relative paths from the manifest's folder), optional
    `id` (default: `image` as written) and optional `regions` (a list, or its JSON text in CSV). Other columns
    are ignored."""

    def __init__(self, path: str, needs_regions: bool):
        super().__init__("manifest", path, needs_regions)
        self.format = MANIFEST_FORMATS[Path(path).suffix.lower()]
        self.folder = Path(path).parent

    def where(self, number: int) -> str:
        return f"{self.path} {'row' if self.format == 'parquet' else 'line'} {number}"

    def _numbered_rows(self) -> Iterator[tuple[Union[SourceRow, str], int]]:
        for number, record in self._records():
            try:
                yield self._row(record), number
            except PAMError as exc:
                yield str(exc), number

    def _records(self) -> Iterator[tuple[int, Any]]:
        """(line or row number, the row: a dict, or a JSONL line's text)."""
        try:
            if self.format == "jsonl":
                with open(self.path, encoding="utf-8") as lines:
                    for number, line in enumerate(lines, 1):
                        if line.strip():
                            yield number, line  # parsed with the row's other checks: one bad row of many
            elif self.format == "csv":
                with open(self.path, encoding="utf-8", newline="") as text:
                    reader = csv.DictReader(text)
                    if "image" not in (reader.fieldnames or ()):
                        raise DatasetError(f"CSV manifest {self.path} has no 'image' column in its header line")
                    for record in reader:
                        yield reader.line_num, record
            else:
                yield from _parquet_records(self.path)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DatasetError(f"cannot read manifest {self.path}: {exc}") from None

    def _row(self, record: Any) -> SourceRow:
        if self.format == "jsonl":
            record = _json(record, "the row")
        if not isinstance(record, dict):
            raise DatasetError(f"a manifest row must be an object with 'image', got {_shown(record)}")
        image = record.get("image")
        if not isinstance(image, str) or not image.strip():
            raise DatasetError(f"'image' must be a path (text), got {_shown(image)}")
        image_id = record.get("id")
        if image_id is None or image_id == "":
            image_id = image
        elif isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
            raise DatasetError(f"'id' must be text or an integer, got {_shown(image_id)}")
        regions = record.get("regions")
        if isinstance(regions, str):  # CSV (or a text column): the list as JSON
            regions = _json(regions, "'regions'") if regions.strip() else None
        if regions is not None and not isinstance(regions, list):
            raise DatasetError(f"'regions' must be a list of regions, got {_shown(regions)}")
        if not regions:
            if self.needs_regions:
                raise DatasetError("the row has no regions; give them in 'regions' (e.g. [{\"box\": [x0, y0, x1, "
                                   "y1]}]) or run with --everything to describe every object found")
            return SourceRow(str(image_id), str(self.folder / image), None, None)
        prompts = tuple(_prompt(region, number) for number, region in enumerate(regions, 1))
        resolved = tuple(self._resolved(prompt, number) for number, prompt in enumerate(prompts, 1))
        return SourceRow(str(image_id), str(self.folder / image), prompts, resolved)

    def _resolved(self, prompt: dict, number: int) -> dict:
        """The region as the stream takes it; a mask file is checked to exist (it is read with its image)."""
        if "mask" not in prompt:
            return prompt
        mask = self.folder / prompt["mask"]
        if not mask.is_file():
            raise DatasetError(f"region {number}: mask file not found: {mask}")
        return {"mask": str(mask)}


def _prompt(region: Any, number: int) -> dict:
    """A region of a manifest row checked for everything that needs no image; keys with null values (absent
    fields of a Parquet struct) are dropped."""
    if not isinstance(region, dict):
        raise DatasetError(f"region {number} must be an object such as {{\"box\": [x0, y0, x1, y1]}}, "
                           f"got {_shown(region)}")
    region = {k: v for k, v in region.items() if v is not None}
    unknown = sorted(set(region) - set(REGION_KEYS))
    if unknown:
        raise DatasetError(f"region {number}: unknown keys {unknown}; a region has 'box', 'points' (+ 'labels') "
                           "or 'mask'")
    if "mask" in region:
        if len(region) > 1:
            raise DatasetError(f"region {number}: a mask region stands alone, without 'box', 'points' or 'labels'")
        if not isinstance(region["mask"], str) or not region["mask"].strip():
            raise DatasetError(f"region {number}: 'mask' must be the path of a PNG file, got {_shown(region['mask'])}")
        return region
    if "labels" in region and "points" not in region:
        raise DatasetError(f"region {number}: 'labels' go with 'points'")
    try:
        # a region that is valid in an unbounded image: every check that needs no image size
        as_region(region).validated(math.inf, math.inf)
    except PAMError as exc:
        raise DatasetError(f"region {number}: {exc}") from None
    return region


def _parquet_records(path: str) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        manifest = pq.ParquetFile(path)
        columns = [c for c in ("image", "id", "regions") if c in manifest.schema_arrow.names]
        if "image" not in columns:
            raise DatasetError(f"Parquet manifest {path} has no 'image' column")
        number = 0
        for batch in manifest.iter_batches(batch_size=4096, columns=columns):
            for record in batch.to_pylist():
                number += 1
                yield number, record
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read Parquet manifest {path}: {exc}") from None


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{what} is not valid JSON: {exc}") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def open_source(spec: str, needs_regions: bool) -> DatasetSource:
    """The source SPEC names: a folder, a manifest file (.jsonl, .ndjson, .csv, .parquet) or a glob.
    `needs_regions`: every row must give its regions (no automatic mode such as --everything was chosen)."""
    path = Path(spec)
    if path.is_dir():
        return _FileList("folder", spec, needs_regions)
    if path.is_file():
        if path.suffix.lower() not in MANIFEST_FORMATS:
            raise DatasetError(f"SOURCE {spec} is a file but not a manifest ({', '.join(MANIFEST_FORMATS)}); for "
                               "one image use `pam describe`")
        return _Manifest(spec, needs_regions)
    if any(c in spec for c in "*?["):
        return _FileList("glob", spec, needs_regions)
    raise DatasetError(f"SOURCE not found: {spec} (a folder, a manifest or a glob such as 'images/**/*.jpg')")
