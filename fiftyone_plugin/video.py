"""Video samples: pam_core tracks the prompted objects with SAM 2 and captions each per segment; here the
result becomes frame-level `Detections` (`index` = track id) and a sample-level `TemporalDetections` field of
segment captions. Frame numbers are FiftyOne's (1-based) everywhere in this module's arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import fiftyone as fo

from pam_core import PAM, GenerationSettings
from pam_core.errors import PromptError, VideoError
from pam_core.tasks import parse_output, resolve_task
from pam_core.video import CARRY_MODES, open_video
from pam_core.tasks import resolve_video_task

from .labels import frame_detection, label_items, segment_detection, video_prompts_from_labels

VIDEO_TASK = "caption"


def captions_field(label_field: str) -> str:
    """The sample field holding a video run's segment captions (and marking the sample as done)."""
    return f"{label_field}_captions"


def check_video_settings(task: str, lang: str, carry: str, window: Optional[int],
                         segments: Optional[Sequence[tuple[int, int]]], prompt_frame: Optional[int]) -> None:
    """Fail before any work on settings no video could run with."""
    resolve_video_task(task, lang)
    if carry not in CARRY_MODES:
        raise VideoError(f"carry must be one of {', '.join(CARRY_MODES)}, got {carry!r}")
    if segments is not None and window is not None:
        raise VideoError("give segments or a window, not both")
    if window is not None and window < 1:
        raise VideoError(f"window must be at least 1 frame, got {window}")
    for start, _ in segments or ():
        if start < 1:
            raise VideoError(f"segment starting at frame {start}: FiftyOne frame numbers start at 1")
    if prompt_frame is not None and prompt_frame < 1:
        raise PromptError(f"prompt frame {prompt_frame}: FiftyOne frame numbers start at 1")


def prompt_labels(sample, prompt_field: str, prompt_frame: Optional[int] = None) -> dict:
    """{frame number: label} of the prompt field on `prompt_frame`, or on the first frame where it has any
    object; empty when there is none."""
    for number, frame in sample.frames.items():
        if prompt_frame is not None and number != prompt_frame:
            continue
        label = frame[prompt_field]
        if label is not None and label_items(label):
            return {number: label}
    return {}


def describe_video_sample(pam: PAM, filepath: str, labels_by_frame: dict, task: str, lang: str,
                          generation: GenerationSettings, window: Optional[int],
                          segments: Optional[Sequence[tuple[int, int]]], carry: str, model_name: str,
                          mask_dir: Optional[Path] = None, sample_id: str = ""
                          ) -> tuple[dict[int, fo.Detections], fo.TemporalDetections]:
    """One video's PAM labels: {frame number: Detections} for every tracked frame, and the segment captions."""
    source = open_video(filepath)
    prompts, names = video_prompts_from_labels(labels_by_frame, source.info.width, source.info.height)
    if not prompts:
        return {}, fo.TemporalDetections(detections=[])
    result = pam.describe_video(source, prompts, task=task, lang=lang, window=window, carry=carry,
                                segments=[(start - 1, end - 1) for start, end in segments] if segments else None,
                                generation=generation)
    instances = [fo.Instance() for _ in prompts]
    frames: dict[int, list] = {}
    for tracked in result.frames:
        mask_file = mask_dir / f"{sample_id}_{tracked.frame + 1:06d}_{tracked.object:03d}.png" if mask_dir else None
        detection = frame_detection(tracked, names[tracked.object] or "object", model_name,
                                    instances[tracked.object], mask_file)
        found = frames.setdefault(tracked.frame + 1, [])  # a tracked frame gets Detections, empty or not
        if detection is not None:
            found.append(detection)
    resolved = None if task == VIDEO_TASK else resolve_task(task, lang)
    text_key = resolved.instruction if resolved is not None and resolved.name == "free" else None
    captions = [segment_detection(caption, {text_key or caption.task: caption.text},
                                  parse_output(resolved, caption.text) if resolved else {}, names[caption.object],
                                  model_name)
                for caption in result.captions]
    return ({number: fo.Detections(detections=found) for number, found in frames.items()},
            fo.TemporalDetections(detections=captions))


def write_video_labels(sample, label_field: str, frames: dict[int, fo.Detections],
                       captions: Optional[fo.TemporalDetections]) -> None:
    """Sets the run's labels on the sample and its frames (saved later, in one batch); labels of an earlier
    run on frames this run did not track are cleared."""
    for number, frame in sample.frames.items():
        if number not in frames and frame[label_field] is not None:
            frame[label_field] = None
    for number, detections in frames.items():
        sample.frames[number][label_field] = detections
    sample[captions_field(label_field)] = captions
