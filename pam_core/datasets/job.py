"""`DescribeJob`: what a dataset run asks of PAM (model, tasks, decoding, how rows without regions get them, how
the stream is sized), as one picklable value. The single-process run of `pam describe-dataset` and every Ray
worker (`ray_backend`) load and describe through it, so both give the same rows for the same settings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..automask import AutoMaskSettings
from ..checkpoint import check_local_weights
from ..concepts import DEFAULT_MAX_INSTANCES, DEFAULT_SAM3, DEFAULT_THRESHOLD, concept_finder
from ..engine import PAM
from ..generation import GenerationSettings
from ..loading import ModelSource, load_pam
from ..rle import rle_to_mask
from ..stream import StreamResult, check_stream_settings
from ..tasks import resolve_tasks
from .output import FIELD_COLUMNS, image_rows, text_column
from .sources import AUTO_PROMPT, SourceRow

TEXT_PREFIX = text_column("")


@dataclass(frozen=True)
class DescribeJob:
    """The settings of a dataset run. `everything`: rows without regions are described everything of (with
    `auto`); `concepts`: SAM 3 finds these in rows without regions instead. Stream sizes as in
    `pam_core.describe_stream` (None: chosen for the device)."""

    source: ModelSource
    tasks: tuple[str, ...] = ("category",)
    lang: str = "en"
    generation: GenerationSettings = GenerationSettings()
    everything: bool = False
    auto: AutoMaskSettings = AutoMaskSettings()
    concepts: tuple[str, ...] = ()
    find_threshold: float = DEFAULT_THRESHOLD
    max_instances: Optional[int] = DEFAULT_MAX_INSTANCES
    sam3: str = DEFAULT_SAM3
    max_batch: Optional[int] = None
    encoder_batch: Optional[int] = None
    read_threads: int = 2
    lookahead: int = 8
    compile_decoder: bool = False
    task_keys: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        check_stream_settings(self.max_batch, self.encoder_batch, self.read_threads, self.lookahead)
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "concepts", tuple(self.concepts))
        object.__setattr__(self, "task_keys", tuple(task.key for task in resolve_tasks(list(self.tasks), self.lang)))

    @property
    def model_name(self) -> str:
        return self.source.name

    def settings(self) -> dict:
        """What the rows depend on, as `_dataset.json` records it (stream sizes and devices are left out: they
        change how fast, not what)."""
        concepts = list(self.concepts)
        return {"tasks": list(self.task_keys), "lang": self.lang, "model": self.model_name,
                "dtype": self.source.dtype, "generation": asdict(self.generation),
                "everything": asdict(self.auto) if self.everything else None,
                "find": {"concepts": concepts, "threshold": self.find_threshold, "max_instances": self.max_instances,
                         "sam3": self.sam3} if concepts else None}

    def check_local_weights(self) -> None:
        """The error `load` would give for weights named by a local path that is missing or incomplete, now."""
        check_local_weights(self.source.model, self.source.sam2, self.source.sam2_config,
                            self.sam3 if self.concepts else None)

    def load(self) -> PAM:
        """PAM (and SAM 3 when the job finds concepts) on this process's device."""
        pam = load_pam(self.source, max_batch=self.max_batch, cache_size=0, compile_decoder=self.compile_decoder)
        if self.concepts:
            pam.sam3 = concept_finder(self.sam3, local_files_only=self.source.local_files_only)
        return pam

    def describe(self, pam: PAM, rows: Iterable[SourceRow]) -> Iterator[tuple[SourceRow, StreamResult]]:
        """Each row with its result, as the stream finishes them."""
        pending: dict[int, SourceRow] = {}  # stream index -> source row, for the images in flight

        def items():
            for index, row in enumerate(rows):
                pending[index] = row
                yield row.stream_item(self.concepts)

        stream = pam.describe_stream(items(), task=list(self.tasks), lang=self.lang, generation=self.generation,
                                     auto=self.auto, encoder_batch=self.encoder_batch, read_threads=self.read_threads,
                                     lookahead=self.lookahead, find_threshold=self.find_threshold,
                                     max_instances=self.max_instances)
        try:
            for result in stream:
                yield pending.pop(result.index), result
        finally:
            stream.close()

    def rows(self, row: SourceRow, result: StreamResult) -> list[dict]:
        """The output rows of one image (`pam_core.datasets.output`)."""
        return image_rows(result, row, self.model_name, self.lang, self.task_keys)


def result_from_rows(rows: list[dict]) -> StreamResult:
    """One image's output rows back as a `StreamResult` (masks decoded), e.g. for a host that takes what a Ray
    run wrote: `error` set for a failed image, no regions for an image in which nothing was found."""
    from ..analysis import RegionResult

    first = rows[0]
    if first.get("error") is not None:
        return StreamResult(-1, first["id"], error=first["error"])
    regions = []
    for row in rows:
        if row.get("region") is None:
            continue
        texts = {key.removeprefix(TEXT_PREFIX): text for key, text in row.items()
                 if key.startswith(TEXT_PREFIX) and text is not None}
        regions.append(RegionResult(
            index=row["region"], prompt=_prompt_kind(row.get("prompt")), mask=rle_to_mask(json.loads(row["mask_rle"])),
            box=tuple(row["box"]) if row.get("box") is not None else None, mask_score=row["mask_score"],
            object_score=row["object_score"], lang=row["lang"], texts=texts,
            fields={key: row[key] for key in FIELD_COLUMNS if row.get(key) is not None},
            concept=row.get("concept"), concept_score=row.get("concept_score")))
    return StreamResult(-1, first["id"], regions)


def _prompt_kind(prompt: Optional[str]) -> str:
    """RegionResult.prompt (box, points, box+points, mask, auto) of an output row's `prompt` JSON."""
    given = json.loads(prompt) if prompt else AUTO_PROMPT
    if "find" in given:  # a SAM 3 instance is described as its box
        return "box"
    return "+".join(kind for kind in ("box", "points", "mask") if kind in given) or "auto"
