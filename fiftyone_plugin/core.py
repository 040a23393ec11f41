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
from pam_core.errors import PAMError, PromptError
from pam_core.io import load_image

from .labels import PROMPT_LABEL_TYPES, check_tasks, detection_from_result, regions_from_label

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


def check_target_field(dataset: fo.Dataset, label_field: str, settings: dict, overwrite: bool) -> None:
    """Refuse to write into a field PAM did not create, or to resume a run with other settings."""
    if not label_field or "." in label_field or label_field.startswith("_"):
        raise ValueError(f"invalid label field name {label_field!r}: use a plain name such as 'pam'")
    if label_field not in dataset.get_field_schema() or overwrite:
        return
    previous = dataset.info.get(RUNS_INFO_KEY, {}).get(label_field)
    if previous is None:
        raise ValueError(f"field {label_field!r} already exists and was not written by PAM; pick another "
                         f"label field or pass overwrite=True to replace it")
    if previous != settings:
        raise ValueError(f"field {label_field!r} holds a PAM run with other settings ({previous}); resume it with "
                         f"the same settings, pick another label field, or pass overwrite=True")


def check_prompt_field(dataset: fo.Dataset, prompt_field: str) -> None:
    field = dataset.get_field(prompt_field)
    if field is None:
        raise ValueError(f"prompt field {prompt_field!r} does not exist on dataset {dataset.name!r}")
    if not (isinstance(field, fo.EmbeddedDocumentField) and issubclass(field.document_type, PROMPT_LABEL_TYPES)):
        raise PromptError(f"prompt field {prompt_field!r} holds {getattr(field, 'document_type', field).__name__}; "
                          f"use a Detections, Keypoints or Polylines field")


def run_pam(sample_collection, label_field: str = "pam", prompt_field: Optional[str] = None,
            tasks: Sequence[str] | str = DEFAULT_TASKS, lang: str = "en", model=DEFAULT_MODEL, sam2=DEFAULT_SAM2,
            overwrite: bool = False, max_regions: int = DEFAULT_MAX_REGIONS, max_new_tokens: int = 512,
            generation: Optional[GenerationSettings] = None, auto: Optional[AutoMaskSettings] = None,
            mask_dir: Optional[str | os.PathLike] = None, device: str = "auto", dtype: Optional[str] = None,
            local_files_only: Optional[bool] = None) -> Iterator[tuple[int, int]]:
    """`apply_pam` as a generator: yields (samples done, samples to do) after each sample; returns the summary."""
    tasks = check_tasks(tasks, lang)
    generation = generation or GenerationSettings(max_new_tokens=max_new_tokens)
    auto = auto or AutoMaskSettings(max_regions=max_regions)
    dataset = sample_collection._dataset
    settings = run_settings(prompt_field, tasks, lang, model)
    check_target_field(dataset, label_field, settings, overwrite)
    if prompt_field is not None:
        check_prompt_field(dataset, prompt_field)
    error_field = f"{label_field}_error"
    todo = sample_collection if overwrite or label_field not in dataset.get_field_schema() \
        else sample_collection.exists(label_field, False)
    total, skipped = len(todo), len(sample_collection) - len(todo)
    summary = {"label_field": label_field, "samples": 0, "skipped": skipped, "failed": 0, "regions": 0, "errors": {}}
    yield 0, total
    if total == 0:
        return summary
    pam = load_pam(model, sam2, device, dtype, local_files_only)
    dataset.info.setdefault(RUNS_INFO_KEY, {})[label_field] = settings
    dataset.save()
    if label_field not in dataset.get_field_schema():
        dataset.add_sample_field(label_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    if error_field not in dataset.get_field_schema():
        dataset.add_sample_field(error_field, fo.StringField,
                                 description="why PAM could not describe this sample (None when it did)")
    with todo.save_context(batch_size=SAVE_BATCH_SIZE) as saver:
        for done, sample in enumerate(todo.iter_samples(), start=1):
            try:
                labels = describe_sample(pam, sample.filepath, sample[prompt_field] if prompt_field else False,
                                         tasks, lang, generation, auto, model_name(model),
                                         Path(mask_dir) if mask_dir else None, sample.id)
                sample[label_field], sample[error_field] = labels, None
                summary["regions"] += len(labels.detections)
                summary["samples"] += 1
            except PAMError as exc:  # a bad file or prompt fails this sample only; the run goes on
                sample[label_field], sample[error_field] = None, str(exc)
                summary["failed"] += 1
                summary["errors"][sample.id] = str(exc)
            saver.save(sample)
            yield done, total
    dataset.add_dynamic_sample_fields()
    return summary


def apply_pam(sample_collection, label_field: str = "pam", prompt_field: Optional[str] = None,
              tasks: Sequence[str] | str = DEFAULT_TASKS, lang: str = "en", model=DEFAULT_MODEL, sam2=DEFAULT_SAM2,
              overwrite: bool = False, **kwargs) -> dict:
    """Describe every sample's regions with PAM into one `Detections` field.

    `prompt_field`: a Detections (boxes, or masks when present), Keypoints or Polylines field whose labels are
    the regions; None describes everything (automatic regions). `tasks`: as in the CLI (category,
    definition, brief, detailed or a free instruction). Samples already done are skipped unless
    `overwrite`; a sample that fails records its error in `<label_field>_error` and the run continues.
    Other keyword arguments: `max_regions`, `max_new_tokens`, `generation` (a GenerationSettings), `auto` (an
    AutoMaskSettings for describe-everything), `mask_dir` (write masks there as PNGs instead of inline),
    `device`, `dtype`, `local_files_only`. Returns a summary dict (samples, skipped, failed, regions, errors).
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
