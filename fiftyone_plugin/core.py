"""`apply_pam`: PAM region labels and captions on a FiftyOne sample collection, resumable and fault-tolerant.

`run_pam` is a generator that yields after every sample so the operator can report progress; `apply_pam`
drains it for scripts. Image runs (`_run_images`) send the images through pam_core's streaming engine
(`PAM.describe_stream`: images read ahead, encoded in batches, the regions of many images decoded together);
video runs (`_run_videos`) describe one video at a time. Both hand `_describe_samples` a `RunContext` and a
generator of described samples, and it saves them in bulk. All model work is pam_core's.
"""

from __future__ import annotations

import logging
import os
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import fiftyone as fo

from pam_core import PAM, AutoMaskSettings, GenerationSettings, ModelSource, load_pam
from pam_core.analysis import RegionResult
from pam_core.checkpoint import DEFAULT_MODEL, DEFAULT_SAM2, DEFAULT_SAM3
from pam_core.concepts import (
    DEFAULT_MAX_INSTANCES,
    DEFAULT_THRESHOLD,
    Sam3Like,
    check_find_settings,
    checked_concepts,
    concept_finder,
)
from pam_core.datasets import DescribeJob, RayWorkers, SourceRow, describe_on_ray, result_from_rows
from pam_core.datasets.ray_backend import import_ray
from pam_core.errors import PAMError, PromptError, SettingsError
from pam_core.io import load_image
from pam_core.stream import StreamItem, StreamResult
from pam_core.tasks import Tasks

from .labels import PROMPT_LABEL_TYPES, detection_from_result, label_tasks, regions_from_label
from .shards import Shard
from .similarity import compute_pam_similarity
from .video import (
    automatic_prompt_labels,
    captions_field,
    check_prompt_frame,
    describe_video_sample,
    prompt_labels,
    video_settings,
    write_video_labels,
)

logger = logging.getLogger(__name__)

DEFAULT_TASKS = ("category", "detailed")
DEFAULT_MAX_REGIONS = AutoMaskSettings().max_regions
RUNS_INFO_KEY = "pam_runs"  # dataset.info[RUNS_INFO_KEY][label_field] = the settings of the run that wrote it
BATCH_SIZE = 16  # samples read from the database together, and saved together in one bulk write
AUTO_OPTIONS = ("max_regions", "auto")  # automatic regions: of each image, or of each video's prompt frame
IMAGE_OPTIONS = ("concepts", "find_threshold", "max_instances", "sam3")
VIDEO_OPTIONS = ("prompts", "prompt_frame", "window", "segments", "carry")
BACKENDS = ("local", "ray")
# apply_pam's options of backend="ray" -> the RayWorkers fields they set
RAY_OPTIONS = {"workers": "workers", "ray_address": "address", "gpus_per_worker": "gpus_per_worker",
               "cpus_per_worker": "cpus_per_worker", "ray_batch": "batch_size"}


def dataset_of(sample_collection) -> fo.Dataset:
    """The dataset whose samples `sample_collection` holds: itself, or the dataset of a view of its samples.
    Patches, frames and clips views are refused: their samples are not the dataset's own."""
    if isinstance(sample_collection, fo.Dataset):
        return sample_collection
    if type(sample_collection) is not fo.DatasetView:
        raise ValueError(f"PAM runs on a dataset or a view of its samples, not on a {type(sample_collection).__name__}"
                         " (patches, frames and clips views hold samples of their own)")
    return fo.load_dataset(sample_collection.dataset_name)


@dataclass(frozen=True)
class ModelRef:
    """The model of a run: a loaded `PAM` as given, or the `ModelSource` that pam_core's one loading path loads
    (into its bounded model cache) when there is work."""

    source: Union[PAM, ModelSource]

    @classmethod
    def of(cls, model, sam2=DEFAULT_SAM2, device: str = "auto", dtype: Optional[str] = None,
           local_files_only: Optional[bool] = None) -> "ModelRef":
        if isinstance(model, PAM):
            return cls(model)
        return cls(ModelSource(model=model, sam2=sam2, device=device, dtype=dtype, local_files_only=local_files_only))

    @property
    def local_files_only(self) -> Optional[bool]:
        return self.source.local_files_only if isinstance(self.source, ModelSource) else None

    @property
    def name(self) -> str:
        """What labels record as `pam_model`: the Hub id or the checkpoint folder's name, never a local path
        (datasets are shared); "PAM" for a model loaded elsewhere."""
        return self.source.name if isinstance(self.source, ModelSource) else type(self.source).__name__

    def load(self) -> PAM:
        return self.source if isinstance(self.source, PAM) else load_pam(self.source)


@dataclass(frozen=True)
class ImageRequest:
    """What an image run asks PAM about every region."""

    tasks: tuple[str, ...]  # resolved task keys
    lang: str
    generation: GenerationSettings
    auto: AutoMaskSettings  # for automatic regions (no prompt field)
    concepts: Sequence[str] = ()  # text concepts: SAM 3 finds the regions (pam_core's PAM.find)
    find_threshold: float = DEFAULT_THRESHOLD
    max_instances: Optional[int] = DEFAULT_MAX_INSTANCES
    sam3: Sam3Like = None  # a folder, Hub id or ConceptFinder (None: facebook/sam3)
    local_files_only: Optional[bool] = None  # for SAM 3 as for PAM: never download when True

    @classmethod
    def of(cls, tasks: Tasks, lang: str, generation: GenerationSettings, auto: AutoMaskSettings,
           **find) -> "ImageRequest":
        return cls(tuple(task.key for task in label_tasks(tasks, lang)), lang, generation, auto, **find)


def describe_sample(pam: PAM, image, prompt_label, request: ImageRequest, model_name: str,
                    mask_dir: Optional[Path] = None, sample_id: str = "") -> fo.Detections:
    """One image's PAM labels: the instances of the request's concepts, the prompt label's regions, or automatic
    regions when `prompt_label` is False. The per-image path of `PAMRegionModel`; runs over datasets stream their
    images instead (`_stream_images`)."""
    image = load_image(image)
    width, height = image.size
    if request.concepts:
        results = pam.find(image, request.concepts, task=list(request.tasks), lang=request.lang,
                           threshold=request.find_threshold, max_instances=request.max_instances,
                           generation=request.generation,
                           sam3=concept_finder(request.sam3, local_files_only=request.local_files_only))
        prompt_names = [None] * len(results)
    elif prompt_label is False:
        results = pam.describe_everything(image, task=list(request.tasks), lang=request.lang,
                                          generation=request.generation, auto=request.auto)
        prompt_names = [None] * len(results)
    else:
        regions, prompt_names = regions_from_label(prompt_label, width, height)
        results = pam.describe(image, regions, task=list(request.tasks), lang=request.lang,
                               generation=request.generation) if regions else []
    return detections_from_results(results, prompt_names, model_name, mask_dir, sample_id)


def detections_from_results(results: Sequence[RegionResult], prompt_names: Sequence[Optional[str]], model_name: str,
                            mask_dir: Optional[Path] = None, sample_id: str = "") -> fo.Detections:
    """An image's RegionResults as one Detections label (regions with an empty mask are left out)."""
    detections = []
    for result, prompt_name in zip(results, prompt_names):
        mask_file = mask_dir / f"{sample_id}_{result.index:03d}.png" if mask_dir is not None else None
        detection = detection_from_result(result, model_name, prompt_name, mask_file)
        if detection is not None:
            detections.append(detection)
    return fo.Detections(detections=detections)


@dataclass
class LabelRegions:
    """A prompt label's regions as a function of the image's size, which the streaming engine calls in its reader
    thread once it has read the image (FiftyOne's coordinates are relative to the image's size). `names` then
    holds each region's prompt label."""

    label: object  # Detections, Keypoints, Polylines or None
    names: list[Optional[str]] = field(default_factory=list)

    def __call__(self, width: int, height: int) -> list:
        regions, self.names = regions_from_label(self.label, width, height)
        return regions


def fill_metadata(sample) -> None:
    """The sample's `metadata` as FiftyOne's `compute_metadata` stores it, where it has none; existing metadata stays.
    An image's comes from its file's header (`ImageMetadata.build_for`: size in bytes, MIME type, width, height,
    channels), a video's from ffprobe, as FiftyOne reads it (`VideoMetadata.build_for`: frame size, rate and count,
    duration, encoding). The file was just read, so it is in the page cache."""
    if sample.metadata is not None:
        return
    build = fo.VideoMetadata.build_for if sample.media_type == "video" else fo.ImageMetadata.build_for
    try:
        sample.metadata = build(sample.filepath)
    except Exception as exc:  # as compute_metadata(skip_failures=True): left empty; a file PAM could not read
        logger.debug("no metadata for %s: %s", sample.filepath, exc)  # has its reason in the error field already


@dataclass(frozen=True)
class RunContext:
    """What image and video runs share: the samples, where their labels go, the model and how it generates."""

    samples: object  # the SampleCollection to describe
    dataset: fo.Dataset
    label_field: str
    model: ModelRef
    overwrite: bool
    generation: GenerationSettings
    mask_dir: Optional[Path]
    shard: Optional[Shard] = None  # describe only the samples of this shard of `samples`
    ray: Optional[RayWorkers] = None  # describe on these Ray workers (images), not in this process
    prepare_only: bool = False  # check, record the settings and declare the fields, but describe nothing

    @property
    def error_field(self) -> str:
        return f"{self.label_field}_error"

    def record(self, prompt_field: Optional[str], tasks: list[str], lang: str, **more) -> dict:
        """The run's settings as recorded in `dataset.info[RUNS_INFO_KEY]`; a resume must repeat them."""
        return {"prompt_field": prompt_field, "tasks": tasks, "lang": lang, "model": self.model.name, **more}

    def check_target(self, record: dict, exists: bool) -> None:
        """Refuse to write into a field PAM did not create, or to resume a run with other settings."""
        field = self.label_field
        if not field or "." in field or field.startswith("_"):
            raise ValueError(f"invalid label field name {field!r}: use a plain name such as 'pam'")
        if not exists or self.overwrite:
            return
        previous = self.dataset.info.get(RUNS_INFO_KEY, {}).get(field)
        if previous is None:
            raise ValueError(f"field {field!r} already exists and was not written by PAM; pick another label field "
                             f"or pass overwrite=True to replace it")
        if previous != record:
            raise ValueError(f"field {field!r} holds a PAM run with other settings ({previous}); resume it with the "
                             f"same settings, pick another label field, or pass overwrite=True")


def check_prompt_field(dataset: fo.Dataset, path: str, kind: str) -> None:
    """`path` (a sample field, or `frames.<name>`) exists and holds labels PAM can take as regions."""
    field = dataset.get_field(path)
    name = path.removeprefix("frames.")
    if field is None:
        raise ValueError(f"{kind} {name!r} does not exist on dataset {dataset.name!r}")
    if not (isinstance(field, fo.EmbeddedDocumentField) and issubclass(field.document_type, PROMPT_LABEL_TYPES)):
        raise PromptError(f"{kind} {name!r} holds {getattr(field, 'document_type', field).__name__}; "
                          f"use a Detections, Keypoints or Polylines field")


def run_pam(sample_collection, label_field: str = "pam", prompt_field: Optional[str] = None,
            tasks: Optional[Tasks] = None, lang: str = "en", model=DEFAULT_MODEL, sam2=DEFAULT_SAM2,
            overwrite: bool = False, *, max_new_tokens: int = 512, generation: Optional[GenerationSettings] = None,
            mask_dir: Optional[str | os.PathLike] = None, device: str = "auto", dtype: Optional[str] = None,
            local_files_only: Optional[bool] = None, shard: Optional[Shard] = None, prepare_only: bool = False,
            backend: str = "local", **media_options) -> Iterator[tuple[int, int]]:
    """`apply_pam` as a generator: yields (samples done, samples to do) after each sample; returns the summary.

    `prepare_only`: what the parent of a sharded run does once before it queues the shards: check the settings,
    record them and declare the fields (with `overwrite`, also clear the samples' labels, so that the shards run
    without it and a re-queued shard resumes); nothing is described and no model is loaded."""
    dataset = dataset_of(sample_collection)
    video = dataset.media_type == "video"
    ray_options = {name: media_options.pop(name) for name in RAY_OPTIONS if name in media_options}
    options = _media_options(dataset, media_options, video)
    model_ref = ModelRef.of(model, sam2, device, dtype, local_files_only)
    run = RunContext(sample_collection, dataset, label_field, model_ref, overwrite,
                     generation or GenerationSettings(max_new_tokens=max_new_tokens),
                     Path(mask_dir) if mask_dir else None, shard=shard, prepare_only=prepare_only,
                     ray=_ray_workers(backend, ray_options, video, model_ref))
    describe_all = _run_videos if video else _run_images
    return (yield from describe_all(run, prompt_field, tasks, lang, **options))


def _ray_workers(backend: str, options: dict, video: bool, model: ModelRef) -> Optional[RayWorkers]:
    """The Ray workers of a `backend="ray"` run (None for "local": this process describes), checked before any
    work: Ray installed (or one line naming the extra), images, and weights that every worker can load."""
    given = {name: value for name, value in options.items() if value is not None}
    if backend not in BACKENDS:
        raise SettingsError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "local":
        if given:
            raise SettingsError(f"{', '.join(given)}: only for backend='ray'")
        return None
    if video:
        raise SettingsError("backend='ray' describes images; describe videos with backend='local'")
    if not isinstance(model.source, ModelSource):
        raise SettingsError("backend='ray' loads the model on every worker: give model= as a Hub id or a checkpoint "
                            "folder that every node can read, not a loaded PAM")
    import_ray()
    return RayWorkers(**{RAY_OPTIONS[name]: value for name, value in given.items()})


def _media_options(dataset: fo.Dataset, options: dict, video: bool) -> dict:
    """The media-specific options given (None counts as not given); those of the other media type are refused."""
    own, other = (VIDEO_OPTIONS, IMAGE_OPTIONS) if video else (IMAGE_OPTIONS, VIDEO_OPTIONS)
    own += AUTO_OPTIONS
    unknown = sorted(set(options) - set(own) - set(other))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}")
    given = {name: value for name, value in options.items() if value is not None}
    misplaced = [name for name in given if name in other]
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)}: only for {'image' if video else 'video'} datasets; "
                         f"{dataset.name!r} holds {dataset.media_type} samples")
    return given


def _run_images(run: RunContext, prompt_field: Optional[str], tasks: Optional[Tasks], lang: str,
                max_regions: int = DEFAULT_MAX_REGIONS, auto: Optional[AutoMaskSettings] = None,
                concepts: Optional[list[str]] = None, find_threshold: float = DEFAULT_THRESHOLD,
                max_instances: Optional[int] = DEFAULT_MAX_INSTANCES, sam3: Sam3Like = None):
    """Each image's regions (of `prompt_field`, SAM 3's instances of `concepts`, or automatic) with the tasks'
    texts into one Detections field."""
    find = {}
    if concepts:
        if prompt_field is not None:
            raise PromptError("concepts find the regions themselves; drop prompt_field")
        check_find_settings(find_threshold, max_instances)
        find = dict(concepts=checked_concepts(concepts), find_threshold=find_threshold, max_instances=max_instances)
    request = ImageRequest.of(DEFAULT_TASKS if tasks is None else tasks, lang, run.generation,
                              auto or AutoMaskSettings(max_regions=max_regions), **find, sam3=sam3,
                              local_files_only=run.model.local_files_only)
    record = run.record(prompt_field, list(request.tasks), lang, **find)
    run.check_target(record, exists=run.label_field in run.dataset.get_field_schema())
    if prompt_field is not None:
        check_prompt_field(run.dataset, prompt_field, "prompt field")

    def declare() -> None:
        if run.label_field not in run.dataset.get_field_schema():
            run.dataset.add_sample_field(run.label_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)

    def describe_all(ids: list[str]) -> Iterator[Described]:
        if run.ray is not None:
            return _ray_images(run, ids, prompt_field, request)
        return _stream_images(run, run.model.load(), ids, prompt_field, request)

    return (yield from _describe_samples(run, record, run.label_field, declare, describe_all))


def _stream_images(run: RunContext, pam: PAM, ids: list[str], prompt_field: Optional[str], request: ImageRequest):
    """The samples of `ids` through pam_core's streaming engine, yielding `Described` as each finishes (not in
    `ids` order), its labels and any missing metadata set. The engine pulls the samples as it reads ahead, a
    database batch at a time; a sample read but not finished yet waits in `reading`."""
    reading: dict[str, tuple[object, Optional[LabelRegions]]] = {}

    def items() -> Iterator[StreamItem]:
        for batch in _sample_batches(run.samples, ids):
            for sample in batch:
                prompt = LabelRegions(sample[prompt_field]) if prompt_field else None  # None: describe everything
                reading[sample.id] = sample, prompt
                yield StreamItem(sample.filepath, prompt, id=sample.id, concepts=request.concepts or None)

    sam3 = concept_finder(request.sam3, local_files_only=request.local_files_only) if request.concepts else None
    stream = pam.describe_stream(items(), task=list(request.tasks), lang=request.lang, generation=request.generation,
                                 auto=request.auto, find_threshold=request.find_threshold,
                                 max_instances=request.max_instances, sam3=sam3)
    with closing(stream):  # a run stopped early stops the engine's reader threads too
        for result in stream:
            sample, prompt = reading.pop(result.id)
            fill_metadata(sample)
            yield _labelled(run, sample, result, prompt.names if prompt is not None else None)


def _ray_images(run: RunContext, ids: list[str], prompt_field: Optional[str],
                request: ImageRequest) -> Iterator[Described]:
    """The samples of `ids` described on Ray workers (`pam_core.datasets.describe_on_ray`), yielding `Described`
    as each finishes. This process reads each sample's path and prompt regions, in pixels (metadata is filled first
    where missing: FiftyOne's coordinates are relative), and keeps only those, the prompts' labels and the metadata
    it filled; the samples of a finished Ray call are read again by id, together, to be labelled, so a huge run holds
    no samples in memory."""
    job = DescribeJob(source=run.model.source, tasks=request.tasks, lang=request.lang, generation=run.generation,
                      everything=prompt_field is None and not request.concepts, auto=request.auto,
                      concepts=tuple(request.concepts), find_threshold=request.find_threshold,
                      max_instances=request.max_instances, sam3=_sam3_for_workers(request.sam3))
    rows, names, filled = [], {}, {}
    for batch in _sample_batches(run.samples, ids):
        for sample in batch:
            if sample.metadata is None:
                fill_metadata(sample)
                filled[sample.id] = sample.metadata
            regions = None  # the workers find them (automatic regions, or SAM 3's instances of the concepts)
            if prompt_field is not None:
                try:
                    width, height = _image_size(sample)
                except PAMError as exc:  # an unreadable image fails here, as the workers would fail it
                    sample[run.label_field] = None
                    yield Described(sample, error=str(exc))
                    continue
                regions, names[sample.id] = regions_from_label(sample[prompt_field], width, height)
                regions = tuple(regions)
            # `prompts` is what RegionResult.prompt is read back from
            prompts = tuple({part: True for part in region.kind.split("+")} for region in regions) if regions else None
            rows.append(SourceRow(sample.id, sample.filepath, prompts, regions))
    calls = describe_on_ray(rows, job, run.ray)
    with closing(calls):  # a run stopped early stops Ray's run too
        for call in calls:
            rows_of = dict(call)
            for batch in _sample_batches(run.samples, list(rows_of)):
                for sample in batch:
                    if sample.metadata is None:
                        sample.metadata = filled.get(sample.id)
                    yield _labelled(run, sample, result_from_rows(rows_of[sample.id]), names.get(sample.id))


def _sam3_for_workers(sam3: Sam3Like) -> str:
    if sam3 is None or isinstance(sam3, (str, os.PathLike)):
        return str(sam3 or DEFAULT_SAM3)
    raise SettingsError("backend='ray' loads SAM 3 on every worker: give sam3= as a folder or Hub id")


def _image_size(sample) -> tuple[int, int]:
    """The sample's width and height, from its metadata, else from the image (which raises pam_core's error for an
    image it cannot read)."""
    if sample.metadata is not None and sample.metadata.width and sample.metadata.height:
        return sample.metadata.width, sample.metadata.height
    return load_image(sample.filepath).size


def _labelled(run: RunContext, sample, result: StreamResult, names: Optional[list]) -> "Described":
    """A finished image's result set as the sample's labels (saved later): its regions, or None and the error."""
    if not result.ok:
        sample[run.label_field] = None
        return Described(sample, error=result.error)
    names = names if names is not None else [None] * len(result.regions)
    labels = detections_from_results(result.regions, names, run.model.name, run.mask_dir, sample.id)
    sample[run.label_field] = labels
    return Described(sample, regions=len(labels.detections))


def _run_videos(run: RunContext, prompt_field: Optional[str], tasks: Optional[Tasks], lang: str,
                prompts: Optional[dict] = None, prompt_frame: Optional[int] = None, window: Optional[int] = None,
                segments: Optional[list[tuple[int, int]]] = None, carry: str = "box",
                max_regions: int = DEFAULT_MAX_REGIONS, auto: Optional[AutoMaskSettings] = None):
    """Each video's prompted objects (or, with neither a prompt field nor prompts, the objects PAM finds on the
    prompt frame) tracked into frame Detections and captioned per segment into TemporalDetections
    (`<label_field>_captions`, which marks the video done)."""
    settings = video_settings(tasks, lang, window, segments, carry)
    check_prompt_frame(prompt_frame)
    prompt_field = prompt_field.removeprefix("frames.") if prompt_field is not None else None
    if prompt_field is not None and prompts is not None:
        raise PromptError("a video run takes its prompts from a frame-level prompt_field or as prompts="
                          "{frame number: Detections/Keypoints/Polylines}, not both (neither: PAM finds the objects "
                          "on the prompt frame)")
    auto = auto or AutoMaskSettings(max_regions=max_regions)
    record = run.record(prompt_field, [settings.task], lang, explicit_prompts=prompts is not None,
                        prompt_frame=prompt_frame, window=window,
                        segments=[list(pair) for pair in segments] if segments else None, carry=carry)
    done_field = captions_field(run.label_field)
    run.check_target(record, exists=run.label_field in run.dataset.get_frame_field_schema()
                     or done_field in run.dataset.get_field_schema())
    if prompt_field is not None:
        check_prompt_field(run.dataset, f"frames.{prompt_field}", "frame field")

    def declare() -> None:
        if run.label_field not in run.dataset.get_frame_field_schema():
            run.dataset.add_frame_field(run.label_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
        if done_field not in run.dataset.get_field_schema():
            run.dataset.add_sample_field(done_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.TemporalDetections)

    def describe(pam: PAM, sample) -> int:
        if prompts is not None:
            labels = prompts
        elif prompt_field is not None:
            labels = prompt_labels(sample, prompt_field, prompt_frame)
        else:
            labels = automatic_prompt_labels(pam, sample.filepath, prompt_frame or 1, auto)
        frames, captions = describe_video_sample(pam, sample.filepath, labels, settings, run.generation,
                                                 run.model.name, run.mask_dir, sample.id)
        write_video_labels(sample, run.label_field, frames, captions)
        return len({caption.index for caption in captions.detections})

    def describe_all(ids: list[str]) -> Iterator[Described]:
        return describe_videos(run.model.load(), ids)

    def describe_videos(pam: PAM, ids: list[str]) -> Iterator[Described]:
        """One video after the other."""
        for batch in _sample_batches(run.samples, ids):
            for sample in batch:
                try:
                    described = Described(sample, regions=describe(pam, sample))
                except PAMError as exc:  # a bad file or prompt fails this sample only; the run goes on
                    write_video_labels(sample, run.label_field, {}, None)
                    described = Described(sample, error=str(exc))
                fill_metadata(sample)
                yield described

    summary = yield from _describe_samples(run, record, done_field, declare, describe_all)
    run.dataset.add_dynamic_frame_fields()
    return summary


@dataclass
class Described:
    """A sample whose labels a run has set (not saved yet): how many regions it got, or why it failed."""

    sample: object
    regions: int = 0
    error: Optional[str] = None


def _sample_batches(samples, ids: list[str]) -> Iterator[list]:
    """The samples of `ids`, in order, read `BATCH_SIZE` at a time: each batch is read in full, so no database
    cursor stays open while PAM works."""
    for start in range(0, len(ids), BATCH_SIZE):
        yield list(samples.select(ids[start:start + BATCH_SIZE], ordered=True).iter_samples())


def _describe_samples(run: RunContext, record: dict, done_field: str, declare: Callable[[], None],
                      describe_all: Callable[[list[str]], Iterator[Described]]):
    """The loop of every run over the samples not done yet (all of them with `overwrite`), saved in bulk.

    Which samples to do is fixed when the run starts, as a list of ids, and `describe_all` reads them by id in
    batches, each in full, so no database cursor stays open for the minutes a batch can take. (MongoDB kills
    cursors idle for 30 minutes; FiftyOne re-opens a lost one by skipping the samples already read, which skipped
    samples never described when the run iterated "not done yet" while saving.) Described samples are saved
    `BATCH_SIZE` at a time in one bulk write each (FiftyOne's save context), labels, error and metadata of a sample
    in one update, so a killed run loses at most the samples not saved yet, and a resume redoes exactly those. A
    run stopped early (the generator closed) saves what finished. A sample that fails records its error and the
    run goes on. With a `shard`, the run is over that shard's samples only (see shards.py).
    """
    samples, dataset = run.samples, run.dataset
    # The schema and info as they are now: another process (a delegated operation, a run killed midway) may have
    # declared the run's fields since this Dataset object was loaded, and a stale one would redo every sample.
    dataset.reload()
    if run.prepare_only:
        _prepare(run, record, declare)
        if run.overwrite:
            samples.clear_sample_field(done_field)
        return {"label_field": run.label_field, "samples": len(samples)}
    resume = not run.overwrite and done_field in dataset.get_field_schema()
    todo = samples.exists(done_field, False) if resume else samples
    ids = todo.values("id")
    in_run = len(samples)
    if run.shard is not None:
        ids = run.shard.pick(ids)
        in_run = len(run.shard.pick(samples.values("id"))) if resume else len(ids)
    total = len(ids)
    summary = {"label_field": run.label_field, "samples": 0, "skipped": in_run - total, "failed": 0,
               "regions": 0, "errors": {}}
    yield 0, total
    if total == 0:
        return summary
    described = describe_all(ids)  # loads the model first (or, on Ray, each worker does)
    _prepare(run, record, declare)
    # closing() is innermost: a stopped run stops describing first, then the save context writes what finished
    with samples.save_context(batch_size=BATCH_SIZE) as saver, closing(described):
        for done, item in enumerate(described, 1):
            item.sample[run.error_field] = item.error
            if item.error is None:
                summary["samples"] += 1
                summary["regions"] += item.regions
            else:
                summary["failed"] += 1
                summary["errors"][item.sample.id] = item.error
            saver.save(item.sample)
            yield done, total
    dataset.add_dynamic_sample_fields()
    return summary


def _prepare(run: RunContext, record: dict, declare: Callable[[], None]) -> None:
    """Records the run's settings in `dataset.info` and declares its fields, each only where not done yet: the
    operations of a sharded run, whose parent did both, then never write the dataset's document concurrently."""
    dataset = run.dataset
    if dataset.info.get(RUNS_INFO_KEY, {}).get(run.label_field) != record:
        dataset.info.setdefault(RUNS_INFO_KEY, {})[run.label_field] = record
        dataset.save()
    declare()
    if run.error_field not in dataset.get_field_schema():
        dataset.add_sample_field(run.error_field, fo.StringField,
                                 description="why PAM could not describe this sample (None when it did)")


def finish(steps: Iterator[tuple[int, int]]) -> dict:
    """Runs `run_pam`'s generator to its end; returns its summary."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def apply_pam(sample_collection, label_field: str = "pam", prompt_field: Optional[str] = None,
              tasks: Optional[Tasks] = None, lang: str = "en", model=DEFAULT_MODEL, sam2=DEFAULT_SAM2,
              overwrite: bool = False, embed: Union[bool, dict] = False, **kwargs) -> dict:
    """Describe every sample's regions with PAM into one `Detections` field.

    `prompt_field`: a Detections (boxes, or masks when present), Keypoints or Polylines field whose labels are
    the regions; None describes everything (automatic regions). `tasks`: as in the CLI (category,
    definition, brief, detailed or a free instruction; default category and detailed). `model`: a Hub id, a
    checkpoint folder or a loaded `pam_core.PAM`; labels record its name (`pam_model`: the Hub id or the
    folder's name). Samples already done are skipped unless `overwrite`; a sample that fails records its error
    in `<label_field>_error` and the run continues. `concepts=["person", "red car"]` (images; instead of a
    prompt field): SAM 3 finds every instance of each and PAM describes it; each Detection carries `concept` and
    SAM 3's `concept_score`; with `find_threshold`, `max_instances` (per concept) and `sam3` (a SAM 3 folder,
    Hub id or `pam_core.ConceptFinder`; default facebook/sam3). Other keyword arguments: `max_regions`,
    `max_new_tokens`, `generation` (a GenerationSettings), `auto` (an AutoMaskSettings for describe-everything),
    `mask_dir` (write masks there as PNGs instead of inline), `device`, `dtype`, `local_files_only`. Returns a
    summary dict (samples, skipped, failed, regions, errors).

    Video datasets: each prompt object is tracked through the video and captioned per segment, into
    frame-level Detections `frames.<label_field>` (`index` = track id) and TemporalDetections
    `<label_field>_captions`. Prompts come from the frame-level `prompt_field` on `prompt_frame`, or on the
    first frame where it has any, or from `prompts={frame number: label}` (the same for every video); with
    neither, the objects PAM finds on `prompt_frame` (default 1; `max_regions`, `auto`) are tracked. One
    task (default "caption", the video task); `window` (frames per caption) or `segments` ([(first, last)]
    frame numbers), `carry` ("box" or "memory", see pam_core). Frame numbers are FiftyOne's, from 1.
    "regions" in the summary counts tracked objects.

    `backend="ray"` (images): Ray workers describe the samples (`pam_core.datasets.describe_on_ray`, the extra
    `pam-suite[ray]`), with `workers` (actors, one model each; default 1), `ray_address` ("auto": the cluster this
    machine belongs to, "local": a Ray started here, or host:port), `gpus_per_worker`, `cpus_per_worker` and
    `ray_batch` (images per Ray batch, 16). This process reads the paths and prompts and writes the labels, resuming
    as the local backend does. `model` must then be a Hub id or a folder every node can read.

    `shard=Shard(i, K)` (fiftyone_plugin.shards) describes only the samples of shard i of K: how the K delegated
    operations of `queue_pam_shards` split a run.

    `embed`: True (or a dict of `compute_pam_similarity` options) then (re)builds the field's semantic search index
    over the whole dataset; the summary's `brain_key` names it. Image datasets only.
    """
    summary = finish(run_pam(sample_collection, label_field, prompt_field, tasks, lang, model, sam2, overwrite,
                             **kwargs))
    if embed:
        options = embed if isinstance(embed, dict) else {}
        summary["brain_key"] = compute_pam_similarity(dataset_of(sample_collection), label_field, **options).key
    return summary
