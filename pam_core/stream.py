"""Datasets, not images: describe a stream of images with the model kept busy.

`describe_stream` reads, checks and preprocesses images ahead of the model in background threads (a bounded
look-ahead), runs SAM 2's image encoder on batches of images, and decodes text with continuous batching: the
(region, task) rows of different images share every decoding step, finished rows leave and the next images'
rows join between steps, their prefill batched. An image's result comes out as soon as its last row finishes,
so memory is bounded by the look-ahead and the decoding batch, whatever the stream's length. In float32 each
image's result is what `PAM.describe` gives for it: the same masks and the same token ids.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import torch
from PIL import Image

from .analysis import RegionAnalysis, RegionResult, analyze_regions, region_result
from .automask import AutoMaskSettings, object_regions
from .concepts import ConceptInstance, checked_concepts
from .errors import PAMError, PromptError, SettingsError
from .generation import DecodeBatch, Generation, GenerationSettings
from .io import ImageLike, load_image
from .model import PAMModel
from .prompts import Region, RegionLike, as_region
from .segmenter import FeatureCache, ImageFeatures, preprocess
from .tasks import Task, Tasks, resolve_tasks

# Images encoded together: a CPU is compute-bound either way, a GPU wants full batches.
CPU_ENCODER_BATCH = 1
GPU_ENCODER_BATCH = 8


@dataclass(frozen=True)
class StreamItem:
    """One image of a stream with what to ask about it.

    `regions`: the region prompts (boxes, points, masks; anything `Region`-like), or None to describe
    everything SAM 2's automatic masks find. Prompts that depend on the image's size (relative coordinates, as
    in FiftyOne labels) may be given as a function of (width, height) returning them: it runs in the reader
    thread once the image is read, and a PAMError it raises becomes the image's error. `concepts`, instead of
    `regions`: text concepts ("red car") whose SAM 3 instances are described as box prompts, as `PAM.find` does
    (the stream needs `find_concepts`). `id` names the image in results (default: the path, else the position
    in the stream). `task`/`lang` override the stream's for this image.
    """

    image: ImageLike
    regions: Optional[Union[Sequence[RegionLike], Callable[[int, int], Sequence[RegionLike]]]] = None
    id: Optional[str] = None
    task: Optional[Tasks] = None
    lang: Optional[str] = None
    concepts: Optional[Sequence[str]] = None


# What finds concepts for a stream: (image, concepts) -> SAM 3's instances (e.g. a bound `ConceptFinder.find`).
FindConcepts = Callable[[Image.Image, list[str]], list[ConceptInstance]]


@dataclass
class StreamResult:
    """One image's regions, or the error that stopped it (a bad image or a region that does not fit it)."""

    index: int  # position in the stream
    id: str
    regions: list[RegionResult] = field(default_factory=list)
    size: Optional[tuple[int, int]] = None  # (width, height) of the image, once read
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class StreamProgress:
    """Where a stream stands, reported after every finished image."""

    images: int  # finished, failed ones included
    regions: int
    failed: int
    elapsed: float  # seconds since the stream started

    @property
    def images_per_s(self) -> float:
        return self.images / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def regions_per_s(self) -> float:
        return self.regions / self.elapsed if self.elapsed > 0 else 0.0


StreamProgressCallback = Callable[[StreamProgress], None]


@dataclass
class _Prepared:
    """An image read, checked and preprocessed by a background thread, or the error that stopped it."""

    index: int
    id: str
    tasks: list[Task]
    lang: str
    size: Optional[tuple[int, int]] = None
    pixels: Optional[torch.Tensor] = None
    regions: Optional[list[Region]] = None  # None: describe everything (or the concepts' instances)
    concepts: Optional[list[str]] = None
    image: Optional[Image.Image] = None  # kept for SAM 3 when there are concepts to find
    cache_key: Optional[str] = None  # the image's FeatureCache key, when the stream has a cache
    error: Optional[str] = None


@dataclass
class _InFlight:
    """An encoded image whose regions are decoding or waiting to join the decoding batch."""

    item: _Prepared
    analyses: list[RegionAnalysis]
    prompts: list[str]
    instances: Optional[list[ConceptInstance]] = None  # SAM 3's, one per region, for concept items
    joined: int = 0  # regions that have joined the batch (in order)
    generations: dict[tuple[int, int], Generation] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.analyses) * len(self.item.tasks)


def _item_id(item: StreamItem, index: int) -> str:
    if item.id is not None:
        return str(item.id)
    if isinstance(item.image, (str, os.PathLike)):
        return os.fspath(item.image)
    return str(index)


class _Reader:
    """Prepares items in background threads, at most `lookahead` ahead of the consumer, in stream order."""

    def __init__(self, items: Iterable[Union[StreamItem, ImageLike]], prepare: Callable[[StreamItem, int], _Prepared],
                 read_threads: int, lookahead: int):
        self._items = enumerate(items)
        self._prepare = prepare
        self._pool = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="pam-read")
        self._futures: deque[Future] = deque()
        self._lookahead = lookahead
        self._exhausted = False
        self._fill()

    def _fill(self) -> None:
        while not self._exhausted and len(self._futures) < self._lookahead:
            try:
                index, item = next(self._items)
            except StopIteration:
                self._exhausted = True
                return
            item = item if isinstance(item, StreamItem) else StreamItem(item)
            self._futures.append(self._pool.submit(self._prepare, item, index))

    @property
    def done(self) -> bool:
        return self._exhausted and not self._futures

    def next(self) -> _Prepared:
        prepared = self._futures.popleft().result()
        self._fill()
        return prepared

    def close(self) -> None:
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Stream:
    """The model side of `describe_stream`: encoder batches, region analysis and the shared decoding batch."""

    def __init__(self, model: PAMModel, task: Tasks, lang: str, generation: GenerationSettings,
                 auto: AutoMaskSettings, max_batch: int, encoder_batch: int, compile_decoder: bool = False,
                 find_concepts: Optional[FindConcepts] = None, cache: Optional[FeatureCache] = None):
        self.model = model
        self.cache = cache if cache is not None and cache.size else None  # size 0: no key to compute per image
        self.find_concepts = find_concepts
        self.task, self.lang = task, lang
        self.tasks = resolve_tasks(task, lang)  # checked before the first image is read
        self.auto = auto
        self.max_batch = max_batch
        self.encoder_batch = encoder_batch
        self.batch = DecodeBatch(model.llm, model.decoding_spec(generation),
                                 step_llm=model.decoding_llm(compile_decoder))
        self.waiting: deque[_InFlight] = deque()  # images with regions that have not joined yet

    def prepare(self, item: StreamItem, index: int) -> _Prepared:
        """Runs in a reader thread: everything that needs no model."""
        lang = item.lang or self.lang
        prepared = _Prepared(index, _item_id(item, index), self.tasks, lang)
        try:
            if item.task is not None or lang != self.lang:
                prepared.tasks = resolve_tasks(self.task if item.task is None else item.task, lang)
            if item.concepts is not None:
                if item.regions is not None:
                    raise PromptError("an image takes regions or concepts, not both")
                if self.find_concepts is None:
                    raise SettingsError("concepts need a stream made with find_concepts (SAM 3)")
                prepared.concepts = checked_concepts(item.concepts)
            image = load_image(item.image)
            prepared.size = image.size
            if prepared.concepts:
                prepared.image = image
            if self.cache is not None:
                prepared.cache_key = FeatureCache.key(image)
            if item.regions is not None:
                regions = item.regions(*image.size) if callable(item.regions) else item.regions
                prepared.regions = [as_region(r).validated(image.width, image.height) for r in regions]
            prepared.pixels = preprocess(image, self.model.segmenter.image_size)
        except PAMError as exc:
            prepared.error = str(exc)
        return prepared

    def analyze(self, items: list[_Prepared]) -> list[_InFlight]:
        """Encode the images in one batch (those the cache does not have), then run each one's regions through
        the decoder and Perceiver."""
        flights = []
        for item, feats in zip(items, self.encode(items)):
            item.pixels = None
            instances = None
            if item.concepts:
                instances = self.find_concepts(item.image, item.concepts)
                item.image = None
                regions = [instance.region(feats.width, feats.height) for instance in instances]
                prompts = ["concept"] * len(regions)
            elif item.regions is None:
                regions = object_regions(self.model.segmenter, feats, self.auto)
                prompts = ["auto"] * len(regions)
            else:
                regions, prompts = item.regions, [r.kind for r in item.regions]
            flights.append(_InFlight(item, analyze_regions(self.model, feats, regions), prompts, instances))
        return flights

    def encode(self, items: list[_Prepared]) -> list[ImageFeatures]:
        cached = [self.cache.get(p.cache_key) if p.cache_key else None for p in items]
        missing = [p for p, feats in zip(items, cached) if feats is None]
        encoded = iter(self.model.segmenter.encode_batch(torch.cat([p.pixels for p in missing]),
                                                         [p.size for p in missing]) if missing else ())
        features = [feats if feats is not None else next(encoded) for feats in cached]
        for item, feats, was_cached in zip(items, features, cached):
            if item.cache_key and was_cached is None:
                self.cache.put(item.cache_key, feats.own_copy() if len(missing) > 1 else feats)
        return features

    def join_waiting(self) -> None:
        """Move waiting regions into the decoding batch while they fit, one prefill per run of regions that
        share their tasks (their prompts differ only in the visual tokens)."""
        while self.waiting:
            tasks = self.waiting[0].item.tasks
            free = self.max_batch - len(self.batch)
            # Each join copies the running KV cache: wait until a quarter of the batch (or all that waits) fits.
            wanted = min(max(len(tasks), self.max_batch // 4), self.waiting_regions() * len(tasks))
            if len(self.batch) and free < wanted:
                return
            visual, tags = [], []
            for flight in self.waiting:
                if flight.item.tasks != tasks:
                    break
                # an empty batch takes a region even when its tasks alone exceed max_batch
                while flight.joined < len(flight.analyses) and (free >= len(tasks) or not tags and not len(self.batch)):
                    region = flight.joined
                    visual.append(flight.analyses[region].visual_embeds)
                    tags += [(flight, region, t) for t in range(len(tasks))]
                    flight.joined += 1
                    free -= len(tasks)
                if flight.joined < len(flight.analyses):
                    break
            while self.waiting and self.waiting[0].joined == len(self.waiting[0].analyses):
                self.waiting.popleft()
            prefixes = self.model.prompt_prefix(torch.stack(visual), tasks[0])
            self.batch.join(prefixes, [self.model.task_ids(t) for t in tasks], tags)

    def waiting_regions(self) -> int:
        return sum(len(f.analyses) - f.joined for f in self.waiting)

    def result(self, flight: _InFlight) -> StreamResult:
        item = flight.item
        regions = [region_result(r, flight.prompts[r], analysis, item.tasks,
                                 [flight.generations[r, t] for t in range(len(item.tasks))], item.lang)
                   for r, analysis in enumerate(flight.analyses)]
        for result, instance in zip(regions, flight.instances or ()):
            result.found_as(instance)
        return StreamResult(item.index, item.id, regions, item.size)


def check_stream_settings(max_batch: Optional[int], encoder_batch: Optional[int], read_threads: int,
                          lookahead: int) -> None:
    """The stream's sizes are all >= 1 (None: chosen for the device). Callers check them before a model loads."""
    if any(v is not None and v < 1 for v in (max_batch, encoder_batch, read_threads, lookahead)):
        raise SettingsError(f"max_batch, encoder_batch, read_threads and lookahead must be >= 1, got {max_batch}, "
                            f"{encoder_batch}, {read_threads} and {lookahead}")


def describe_stream(model: PAMModel, items: Iterable[Union[StreamItem, ImageLike]], task: Tasks = "category",
                    lang: str = "en", generation: GenerationSettings = GenerationSettings(),
                    auto: AutoMaskSettings = AutoMaskSettings(), *, max_batch: int = 16,
                    compile_decoder: bool = False, encoder_batch: Optional[int] = None, read_threads: int = 2,
                    lookahead: int = 8, progress: Optional[StreamProgressCallback] = None,
                    cancel: Optional[threading.Event] = None, find_concepts: Optional[FindConcepts] = None,
                    cache: Optional[FeatureCache] = None) -> Iterator[StreamResult]:
    """Describe every image of `items` (`StreamItem`s, or images to describe everything of), yielding one
    `StreamResult` per image as it completes (not necessarily in stream order; `index` gives the position).

    An unreadable image or a region that does not fit its image gives a result with `error` set, and the
    stream goes on. `max_batch` bounds the (region, task) rows decoded together, `encoder_batch` the images
    encoded together (default 1 on a CPU, 8 on a GPU), `read_threads` the reader threads and `lookahead` the
    images read ahead. `compile_decoder` decodes with `torch.compile`d LLM steps (`PAMModel.decoding_llm`).
    `progress` is called after every image; setting `cancel` (or closing the iterator) stops the stream after
    the current decoding step, and what finished has been yielded. `find_concepts` finds the instances of the
    items' `concepts` (called in the model's thread, once per image with concepts). With a `cache`, an image
    whose features it holds skips the encoder, and the images encoded go into it.
    """
    check_stream_settings(max_batch, encoder_batch, read_threads, lookahead)
    if encoder_batch is None:
        encoder_batch = GPU_ENCODER_BATCH if model.device.type == "cuda" else CPU_ENCODER_BATCH
    stream = _Stream(model, task, lang, generation, auto, max_batch, encoder_batch, compile_decoder, find_concepts,
                     cache)
    return _run(stream, items, read_threads, max(lookahead, encoder_batch), progress, cancel)


def _run(stream: _Stream, items: Iterable, read_threads: int, lookahead: int,
         progress: Optional[StreamProgressCallback], cancel: Optional[threading.Event]) -> Iterator[StreamResult]:
    reader = _Reader(items, stream.prepare, read_threads, lookahead)  # starts reading at the first next()
    started = time.perf_counter()
    counts = {"images": 0, "regions": 0, "failed": 0}

    def finished(result: StreamResult) -> StreamResult:
        counts["images"] += 1
        counts["regions"] += len(result.regions)
        counts["failed"] += not result.ok
        if progress:
            progress(StreamProgress(counts["images"], counts["regions"], counts["failed"],
                                    time.perf_counter() - started))
        return result

    try:
        while True:
            if cancel is not None and cancel.is_set():
                return
            # Keep enough regions analysed to fill the batch; read and encode more images only then.
            while not reader.done and stream.waiting_regions() * len(stream.tasks) < stream.max_batch:
                ready = []
                while not reader.done and len(ready) < stream.encoder_batch:
                    item = reader.next()
                    if item.error is not None or item.regions == []:  # nothing to encode: done already
                        yield finished(StreamResult(item.index, item.id, [], item.size, item.error))
                    else:
                        ready.append(item)
                if not ready:
                    continue
                for flight in stream.analyze(ready):
                    if flight.analyses:
                        stream.waiting.append(flight)
                    else:
                        yield finished(stream.result(flight))
            stream.join_waiting()
            if not len(stream.batch):
                if reader.done and not stream.waiting:
                    return
                continue
            for (flight, region, task_index), ids, _ in stream.batch.step():
                flight.generations[region, task_index] = Generation(ids, stream.model.decode_text(ids))
                if len(flight.generations) == flight.rows:
                    yield finished(stream.result(flight))
    finally:
        reader.close()
