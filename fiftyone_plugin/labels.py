"""Translation between FiftyOne labels and pam_core: prompts in, `fo.Detections` out. No model logic here."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import fiftyone as fo
import numpy as np
from PIL import Image

from pam_core import Region
from pam_core.errors import PromptError, TaskError
from pam_core.tasks import Task, Tasks, resolve_tasks
from pam_core.video import VideoPrompt

# Where each task's text goes on a Detection. `label` is PAM's category; the answer to a free instruction
# (keyed by the instruction itself in RegionResult.texts) goes to `answer`, the instruction to `instruction`.
# A video segment's caption ("video_caption", the `caption` task of describe_video) goes to `caption` too.
TASK_ATTRIBUTES = {"category": "label", "definition": "definition", "brief": "brief_caption", "detailed": "caption",
                   "video_caption": "caption"}
# Every attribute a run writes text to (what caption search looks in).
TEXT_ATTRIBUTES = tuple(dict.fromkeys([*TASK_ATTRIBUTES.values(), "answer"]))
PROMPT_LABEL_TYPES = (fo.Detections, fo.Keypoints, fo.Polylines)


def label_tasks(tasks: Tasks, lang: str) -> list[Task]:
    """An image run's tasks, resolved by pam_core; at most one free instruction, because its answer has one
    attribute (`answer`) on the label."""
    resolved = resolve_tasks(tasks, lang)
    if sum(task.name == "free" for task in resolved) > 1:
        raise TaskError("only one free instruction per run: its answer is stored in the `answer` attribute")
    return resolved


def regions_from_label(label, width: int, height: int) -> tuple[list[Region], list[Optional[str]]]:
    """PAM regions from a Detections (masks when present, else boxes), Keypoints (points) or Polylines
    (filled shapes as masks, open lines as points) label, plus each prompt's own label."""
    if label is None:
        return [], []
    if not isinstance(label, PROMPT_LABEL_TYPES):
        raise PromptError(f"prompt field holds {type(label).__name__}; use a Detections, Keypoints or Polylines field")
    regions, names = [], []
    for item in label_items(label):
        region = _region(item, width, height)
        if region is not None:
            regions.append(region)
            names.append(item.label)
    return regions, names


def label_items(label) -> list:
    if isinstance(label, fo.Detections):
        return label.detections
    if isinstance(label, fo.Keypoints):
        return label.keypoints
    return label.polylines


def _region(item, width: int, height: int) -> Optional[Region]:
    if isinstance(item, fo.Detection):
        if item.mask is not None or item.mask_path is not None:
            mask = item.to_segmentation(frame_size=(width, height), target=255).get_mask() > 0
            if mask.any():
                return Region.from_mask(mask)
        x, y, w, h = item.bounding_box
        return Region.from_box([x * width, y * height, (x + w) * width, (y + h) * height])
    if isinstance(item, fo.Polyline) and item.filled and item.closed:
        mask = item.to_segmentation(frame_size=(width, height), target=255).get_mask() > 0
        return Region.from_mask(mask) if mask.any() else None
    points = item.points if isinstance(item, fo.Keypoint) else [p for shape in item.points for p in shape]
    pixels = [(px * width, py * height) for px, py in points if np.isfinite(px) and np.isfinite(py)]
    return Region.from_points(pixels) if pixels else None


def text_attributes(texts: dict[str, str], fields: dict[str, str]) -> dict:
    """Each task's text under its attribute name (see TASK_ATTRIBUTES), parsed fields winning over raw texts."""
    attributes = {}
    for task, text in texts.items():
        if task in TASK_ATTRIBUTES:
            attributes[TASK_ATTRIBUTES[task]] = text
        else:
            attributes["answer"], attributes["instruction"] = text, task
    for name, value in fields.items():
        if value:  # parsed fields (label, definition) win over the raw text of their task
            attributes[name] = value
    return attributes


def detection_from_result(result, model_name: str, prompt_label: Optional[str] = None,
                          mask_file: Optional[Path] = None) -> Optional[fo.Detection]:
    """One pam_core RegionResult as a Detection: `label` = category, each task's text as a string attribute,
    the mask cropped to its box (inline, or written to `mask_file` as a PNG for large datasets).
    None for an empty mask (nothing to show or search)."""
    if not result.mask.any():
        return None
    attributes = {"pam_model": model_name, "lang": result.lang, "object_score": float(result.object_score)}
    attributes.update(text_attributes(result.texts, result.fields))
    if prompt_label is not None:
        attributes["prompt_label"] = prompt_label
    if result.concept is not None:  # found by SAM 3 (pam_core's PAM.find)
        attributes.update(concept=result.concept, concept_score=float(result.concept_score))
    label = attributes.pop("label", None)
    detection = fo.Detection.from_mask(result.mask, label=label, confidence=float(result.mask_score), **attributes)
    return _mask_to_file(detection, mask_file)


def _mask_to_file(detection: fo.Detection, mask_file: Optional[Path]) -> fo.Detection:
    """Moves the detection's inline mask to a PNG at `mask_file` (`mask_path`), when one is given."""
    if mask_file is not None:
        mask_file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(detection.mask.astype(np.uint8) * 255).save(mask_file)
        detection.mask = None
        detection.mask_path = str(mask_file)
    return detection


# ------------------------------------------------------------------------------------------------- video
# FiftyOne numbers video frames from 1, pam_core from 0: these helpers are the only place that converts.

def video_prompts_from_labels(labels_by_frame: dict, width: int, height: int
                              ) -> tuple[list[VideoPrompt], list[Optional[str]]]:
    """pam_core video prompts from {FiftyOne frame number (1-based): Detections/Keypoints/Polylines label},
    one object per detection, keypoint set or polyline, in frame order, plus each prompt's own label."""
    prompts, names = [], []
    for frame_number in sorted(labels_by_frame):
        if not isinstance(frame_number, (int, np.integer)) or frame_number < 1:
            raise PromptError(f"prompt frame {frame_number!r}: FiftyOne frame numbers are integers from 1")
        regions, labels = regions_from_label(labels_by_frame[frame_number], width, height)
        prompts += [VideoPrompt(region, frame=int(frame_number) - 1) for region in regions]
        names += labels
    return prompts, names


def frame_detection(tracked, label: str, model_name: str, instance: fo.Instance,
                    mask_file: Optional[Path] = None) -> Optional[fo.Detection]:
    """One pam_core ObjectFrame as a Detection: `index` = track id, the xyxy pixel box as a relative box, the
    mask cropped to it, `confidence` = SAM 2's mask score. None where the object is absent (empty mask)."""
    if tracked.box is None:
        return None
    mask = tracked.mask
    height, width = mask.shape
    x0, y0, x1, y1 = (int(round(v)) for v in tracked.box)
    detection = fo.Detection(label=label, bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
                             mask=mask[y0:y1, x0:x1], confidence=float(tracked.mask_score), index=tracked.object,
                             instance=instance, object_score=float(tracked.object_score), pam_model=model_name)
    return _mask_to_file(detection, mask_file)


def segment_detection(caption, texts: dict[str, str], fields: dict[str, str], prompt_label: Optional[str],
                      model_name: str) -> fo.TemporalDetection:
    """One pam_core SegmentCaption as a TemporalDetection over its 1-based frames, `index` = track id.
    `label`: PAM's category when the task gives one, else the prompt's label, else "object"."""
    attributes = {"pam_model": model_name, "lang": caption.lang, **text_attributes(texts, fields)}
    if prompt_label is not None:
        attributes["prompt_label"] = prompt_label
    label = attributes.pop("label", None) or prompt_label or "object"
    return fo.TemporalDetection(label=label, support=[caption.start_frame + 1, caption.end_frame + 1],
                                index=caption.object, **attributes)


def text_fields(collection) -> list[str]:
    """The sample fields of `collection` that hold Detections or (video captions) TemporalDetections: the
    candidates for caption search."""
    schema = collection.get_field_schema(embedded_doc_type=fo.Detections)
    schema.update(collection.get_field_schema(embedded_doc_type=fo.TemporalDetections))
    return sorted(schema)
