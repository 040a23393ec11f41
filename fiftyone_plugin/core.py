"""`apply_pam`: PAM region labels and captions on a FiftyOne sample collection, resumable and fault-tolerant.

The loop lives in `run_pam`, a generator that yields after every sample so the operator can report progress;
`apply_pam` drains it for scripts. All model work is pam_core's.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence

import fiftyone as fo
from fiftyone import ViewField as F

from pam_core import PAM, AutoMaskSettings, GenerationSettings
from pam_core.checkpoint import DEFAULT_MODEL, DEFAULT_SAM2
from pam_core.errors import PAMError, PromptError, TaskError
from pam_core.io import load_image

from .labels import PROMPT_LABEL_TYPES, check_tasks, detection_from_result, regions_from_label
from .video import (VIDEO_TASK, captions_field, check_video_settings, describe_video_sample, prompt_labels,
                    write_video_labels)

DEFAULT_TASKS = ("category", "detailed")
DEFAULT_MAX_REGIONS = AutoMaskSettings().max_regions
RUNS_INFO_KEY = "pam_runs"  # dataset.info[RUNS_INFO_KEY][label_field] = the settings of the run that wrote it
SAVE_BATCH_SIZE = 16

_loaded: dict[tuple, PAM] = {}
_loading = threading.Lock()


def load_pam(model=DEFAULT_MODEL, sam2=DEFAULT_SAM2, device: str = "auto", dtype: Optional[str] = None,
             local_files_only: Optional[bool] = None) -> PAM:
    """A PAM instance, loaded once per process and setting (operators run many times in one App server)."""
    if isinstance(model, PAM):
        return model
    key = (str(model), str(sam2), device, dtype, local_files_only)
    with _loading:
        if key not in _loaded:
            _loaded[key] = PAM.from_pretrained(model, sam2=sam2, device=device, dtype=dtype,
                                               local_files_only=local_files_only)
        return _loaded[key]


def model_name(model) -> str:
    """What `pam_model` records: the Hub id or folder given, or the class name for a loaded instance."""
    return type(model).__name__ if isinstance(model, PAM) else str(model)


def describe_sample(pam: PAM, image, prompt_label, tasks: Sequence[str], lang: str, generation: GenerationSettings,
                    auto: AutoMaskSettings, name: str, mask_dir: Optional[Path] = None,
                    sample_id: str = "") -> fo.Detections:
    """One image's PAM labels: the prompt label's regions, or automatic regions when `prompt_label` is False."""
    image = load_image(image)
    width, height = image.size
    if prompt_label is False:
        results = pam.describe_everything(image, task=list(tasks), lang=lang, generation=generation,
                                          auto=auto)
        prompt_names = [None] * len(results)
    else:
        regions, prompt_names = regions_from_label(prompt_label, width, height)
        results = pam.describe(image, regions, task=list(tasks), lang=lang, generation=generation) if regions else []
    detections = []
    for result, prompt_name in zip(results, prompt_names):
        mask_file = mask_dir / f"{sample_id}_{result.index:03d}.png" if mask_dir is not None else None
        detection = detection_from_result(result, name, prompt_name, mask_file)
        if detection is not None:
            detections.append(detection)
    return fo.Detections(detections=detections)


def run_settings(prompt_field, tasks, lang, model) -> dict:
    return {"prompt_field": prompt_field, "tasks": list(tasks), "lang": lang, "model": model_name(model)}


def check_target_field(dataset: fo.Dataset, label_field: str, settings: dict, overwrite: bool,
                       exists: bool) -> None:
    """Refuse to write into a field PAM did not create, or to resume a run with other settings."""
    if not label_field or "." in label_field or label_field.startswith("_"):
        raise ValueError(f"invalid label field name {label_field!r}: use a plain name such as 'pam'")
    if not exists or overwrite:
        return
    previous = dataset.info.get(RUNS_INFO_KEY, {}).get(label_field)
    if previous is None:
        raise ValueError(f"field {label_field!r} already exists and was not written by PAM; pick another "
                         f"label field or pass overwrite=True to replace it")
    if previous != settings:
        raise ValueError(f"field {label_field!r} holds a PAM run with other settings ({previous}); resume it with "
                         f"the same settings, pick another label field, or pass overwrite=True")


def check_prompt_field(dataset: fo.Dataset, prompt_field: str, video: bool = False) -> None:
    kind = "frame field" if video else "prompt field"
    field = dataset.get_field(f"frames.{prompt_field}" if video else prompt_field)
    if field is None:
        raise ValueError(f"{kind} {prompt_field!r} does not exist on dataset {dataset.name!r}")
    if not (isinstance(field, fo.EmbeddedDocumentField) and issubclass(field.document_type, PROMPT_LABEL_TYPES)):
        raise PromptError(f"{kind} {prompt_field!r} holds {getattr(field, 'document_type', field).__name__}; "
                          f"use a Detections, Keypoints or Polylines field")


def _video_task(tasks: Sequence[str] | str | None) -> str:
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks or (VIDEO_TASK,))
    if len(tasks) != 1:
        raise TaskError(f"a video run takes one task (default {VIDEO_TASK!r}), got {list(tasks)}")
    return tasks[0]


def run_pam(sample_collection, label_field: str = "pam", prompt_field: Optional[str] = None,
            tasks: Sequence[str] | str | None = None, lang: str = "en", model=DEFAULT_MODEL, sam2=DEFAULT_SAM2,
            overwrite: bool = False, max_regions: int = DEFAULT_MAX_REGIONS, max_new_tokens: int = 512,
            generation: Optional[GenerationSettings] = None, auto: Optional[AutoMaskSettings] = None,
            mask_dir: Optional[str | os.PathLike] = None, device: str = "auto", dtype: Optional[str] = None,
            local_files_only: Optional[bool] = None, prompts: Optional[dict] = None,
            prompt_frame: Optional[int] = None, window: Optional[int] = None,
            segments: Optional[Sequence[tuple[int, int]]] = None, carry: Optional[str] = None
            ) -> Iterator[tuple[int, int]]:
    """`apply_pam` as a generator: yields (samples done, samples to do) after each sample; returns the summary."""
    generation = generation or GenerationSettings(max_new_tokens=max_new_tokens)
    auto = auto or AutoMaskSettings(max_regions=max_regions)
    dataset = sample_collection._dataset
    video = dataset.media_type == "video"
    video_options = {"prompt_frame": prompt_frame, "window": window, "segments": segments, "carry": carry}
    if video:
        task, carry = _video_task(tasks), carry or "box"
        check_video_settings(task, lang, carry, window, segments, prompt_frame)
        if prompt_field is not None and prompt_field.startswith("frames."):
            prompt_field = prompt_field[len("frames."):]
        if (prompt_field is None) == (prompts is None):
            raise PromptError("a video run needs its prompts from a frame-level prompt_field or as prompts="
                              "{frame number: Detections/Keypoints/Polylines}, one of the two")
        settings = {**run_settings(prompt_field, [task], lang, model), "explicit_prompts": prompts is not None,
                    **video_options, "carry": carry, "segments": [list(s) for s in segments] if segments else None}
        done_field = captions_field(label_field)
        exists = label_field in dataset.get_frame_field_schema() or done_field in dataset.get_field_schema()
    else:
        given = [name for name, value in {"prompts": prompts, **video_options}.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only for video datasets; {dataset.name!r} holds "
                             f"{dataset.media_type} samples")
        tasks = check_tasks(DEFAULT_TASKS if tasks is None else tasks, lang)
        settings = run_settings(prompt_field, tasks, lang, model)
        done_field = label_field
        exists = label_field in dataset.get_field_schema()
    check_target_field(dataset, label_field, settings, overwrite, exists)
    if prompt_field is not None:
        check_prompt_field(dataset, prompt_field, video)
    error_field = f"{label_field}_error"
    todo = sample_collection if overwrite or done_field not in dataset.get_field_schema() \
        else sample_collection.exists(done_field, False)
    total, skipped = len(todo), len(sample_collection) - len(todo)
    summary = {"label_field": label_field, "samples": 0, "skipped": skipped, "failed": 0, "regions": 0, "errors": {}}
    yield 0, total
    if total == 0:
        return summary
    pam = load_pam(model, sam2, device, dtype, local_files_only)
    name, mask_dir = model_name(model), Path(mask_dir) if mask_dir else None
    dataset.info.setdefault(RUNS_INFO_KEY, {})[label_field] = settings
    dataset.save()
    _declare_fields(dataset, label_field, error_field, video)

    def describe(sample) -> int:
        """Sets the sample's labels (saved with the next batch); returns how many regions (objects) it has."""
        if not video:
            labels = describe_sample(pam, sample.filepath, sample[prompt_field] if prompt_field else False, tasks,
                                     lang, generation, auto, name, mask_dir, sample.id)
            sample[label_field] = labels
            return len(labels.detections)
        frames, captions = describe_video_sample(
            pam, sample.filepath, prompts if prompts is not None else prompt_labels(sample, prompt_field, prompt_frame),
            task, lang, generation, window, segments, carry, name, mask_dir, sample.id)
        write_video_labels(sample, label_field, frames, captions)
        return len({caption.index for caption in captions.detections})

    with todo.save_context(batch_size=SAVE_BATCH_SIZE) as saver:
        for done, sample in enumerate(todo.iter_samples(), start=1):
            try:
                summary["regions"] += describe(sample)
                sample[error_field] = None
                summary["samples"] += 1
            except PAMError as exc:  # a bad file or prompt fails this sample only; the run goes on
                if video:
                    write_video_labels(sample, label_field, {}, None)
                else:
                    sample[label_field] = None
                sample[error_field] = str(exc)
                summary["failed"] += 1
                summary["errors"][sample.id] = str(exc)
            saver.save(sample)
            yield done, total
    dataset.add_dynamic_sample_fields()
    if video:
        dataset.add_dynamic_frame_fields()
    return summary


def _declare_fields(dataset: fo.Dataset, label_field: str, error_field: str, video: bool) -> None:
    """The run's fields with their label types, so they exist (and show in the App) before the first sample."""
    samples = dataset.get_field_schema()
    if video and label_field not in dataset.get_frame_field_schema():
        dataset.add_frame_field(label_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    done_field, label_type = (captions_field(label_field), fo.TemporalDetections) if video \
        else (label_field, fo.Detections)
    if done_field not in samples:
        dataset.add_sample_field(done_field, fo.EmbeddedDocumentField, embedded_doc_type=label_type)
    if error_field not in samples:
        dataset.add_sample_field(error_field, fo.StringField,
                                 description="why PAM could not describe this sample (None when it did)")


def apply_pam(sample_collection, label_field: str = "pam", prompt_field: Optional[str] = None,
              tasks: Sequence[str] | str | None = None, lang: str = "en", model=DEFAULT_MODEL, sam2=DEFAULT_SAM2,
              overwrite: bool = False, **kwargs) -> dict:
    """Describe every sample's regions with PAM into one `Detections` field.

    `prompt_field`: a Detections (boxes, or masks when present), Keypoints or Polylines field whose labels are
    the regions; None describes everything (automatic regions). `tasks`: as in the CLI (category,
    definition, brief, detailed or a free instruction; default category and detailed). Samples already done
    are skipped unless `overwrite`; a sample that fails records its error in `<label_field>_error` and the run
    continues. Other keyword arguments: `max_regions`, `max_new_tokens`, `generation` (a GenerationSettings),
    `auto` (an AutoMaskSettings for describe-everything), `mask_dir` (write masks there as PNGs instead of
    inline), `device`, `dtype`, `local_files_only`. Returns a summary dict (samples, skipped, failed, regions,
    errors).

    Video datasets: each prompt object is tracked through the video and captioned per segment, into
    frame-level Detections `frames.<label_field>` (`index` = track id) and TemporalDetections
    `<label_field>_captions`. Prompts come from the frame-level `prompt_field` on `prompt_frame`, or on the
    first frame where it has any, or from `prompts={frame number: label}` (the same for every video). One
    task (default "caption", the video task); `window` (frames per caption) or `segments` ([(first, last)]
    frame numbers), `carry` ("box" or "memory", see pam_core). Frame numbers are FiftyOne's, from 1.
    "regions" in the summary counts tracked objects.
    """
    steps = run_pam(sample_collection, label_field, prompt_field, tasks, lang, model, sam2, overwrite, **kwargs)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def caption_search_view(sample_collection, label_field: str, query: str, match: str = "all",
                        attributes: Sequence[str] = ("label", "definition", "function", "caption", "brief_caption",
                                                     "answer")):
    """The regions of `label_field` whose texts contain the query, case-insensitively.

    `match`: "all" (every word somewhere in the region's texts), "any" (one of the words) or "phrase"
    (the exact phrase in one text). The App sidebar only filters by exact value; this finds words in captions.
    """
    words = query.split()
    if not words:
        raise ValueError("the search query is empty")
    if match not in ("all", "any", "phrase"):
        raise ValueError(f"match must be 'all', 'any' or 'phrase', got {match!r}")

    def contains(text: str):
        found = None
        for attribute in attributes:
            expr = F(attribute).contains_str(text, case_sensitive=False)
            found = expr if found is None else found | expr
        return found

    if match == "phrase":
        expr = contains(" ".join(words))
    else:
        parts = [contains(word) for word in words]
        expr = parts[0]
        for part in parts[1:]:
            expr = (expr & part) if match == "all" else (expr | part)
    return sample_collection.filter_labels(label_field, expr)
