"""Video samples: pam_core tracks the prompted objects with SAM 2 and captions each per segment; here the
result becomes frame-level `Detections` (`index` = track id) and a sample-level `TemporalDetections` field of
segment captions. Frame numbers are FiftyOne's (1-based) in this module's arguments; `video_settings` turns a
run's into pam_core's (0-based) and `labels` does the same for prompts and results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import fiftyone as fo

from pam_core import PAM, AutoMaskSettings, GenerationSettings, VideoSettings
from pam_core.errors import PromptError, TaskError, VideoError
from pam_core.tasks import VIDEO_CAPTION, Tasks, parse_output
from pam_core.video import open_video

from .labels import frame_detection, label_items, segment_detection, video_prompts_from_labels


def captions_field(label_field: str) -> str:
    """The sample field holding a video run's segment captions (and marking the sample as done)."""
    return f"{label_field}_captions"


def video_settings(tasks: Optional[Tasks], lang: str, window: Optional[int] = None,
                   segments: Optional[Sequence[tuple[int, int]]] = None, carry: str = "box") -> VideoSettings:
    """pam_core's settings of a video run from `apply_pam`'s arguments: its one task (default "caption") and
    `segments` in FiftyOne frame numbers, which start at 1. pam_core validates the rest."""
    names = [tasks] if isinstance(tasks, str) else list(tasks or [VIDEO_CAPTION])
    if len(names) != 1:
        raise TaskError(f"a video run takes one task (default {VIDEO_CAPTION!r}), got {names}")
    for start, _ in segments or ():
        if start < 1:
            raise VideoError(f"segment starting at frame {start}: FiftyOne frame numbers start at 1")
    return VideoSettings(task=names[0], lang=lang, window=window, carry=carry,
                         segments=[(start - 1, end - 1) for start, end in segments] if segments else None)


def check_prompt_frame(prompt_frame: Optional[int]) -> None:
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


def automatic_prompt_labels(pam: PAM, filepath: str, frame_number: int, auto: AutoMaskSettings
                            ) -> dict[int, fo.Detections]:
    """{frame number: box Detections}: the objects PAM finds on that frame (describe everything's regions), as
    prompts for a video without a prompt field."""
    source = open_video(filepath)
    for index, image, _ in source.frames():
        if index == frame_number - 1:
            width, height = image.size
            boxes = [region.box for region in pam.find_regions(image, auto)]
            return {frame_number: fo.Detections(detections=[
                fo.Detection(bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height])
                for x0, y0, x1, y1 in boxes])}
    raise PromptError(f"prompt frame {frame_number} is past the last frame of {filepath} "
                      f"({source.info.num_frames} frames)")


def describe_video_sample(pam: PAM, filepath: str, labels_by_frame: dict, settings: VideoSettings,
                          generation: GenerationSettings, model_name: str, mask_dir: Optional[Path] = None,
                          sample_id: str = "") -> tuple[dict[int, fo.Detections], fo.TemporalDetections]:
    """One video's PAM labels: {frame number: Detections} for every tracked frame, and the segment captions."""
    source = open_video(filepath)
    prompts, names = video_prompts_from_labels(labels_by_frame, source.info.width, source.info.height)
    if not prompts:
        return {}, fo.TemporalDetections(detections=[])
    result = pam.describe_video(source, prompts, settings, generation=generation)
    instances = [fo.Instance() for _ in prompts]
    frames: dict[int, list] = {}
    for tracked in result.frames:
        mask_file = mask_dir / f"{sample_id}_{tracked.frame + 1:06d}_{tracked.object:03d}.png" if mask_dir else None
        detection = frame_detection(tracked, names[tracked.object] or "object", model_name,
                                    instances[tracked.object], mask_file)
        found = frames.setdefault(tracked.frame + 1, [])  # a tracked frame gets Detections, empty or not
        if detection is not None:
            found.append(detection)
    task = settings.caption_task
    captions = [segment_detection(caption, {task.key: caption.text}, parse_output(task, caption.text),
                                  names[caption.object], model_name)
                for caption in result.captions]
    return ({number: fo.Detections(detections=found) for number, found in frames.items()},
            fo.TemporalDetections(detections=captions))


def captioned_frames(frames: dict[int, fo.Detections], captions: fo.TemporalDetections) -> dict[int, fo.Detections]:
    """The frame labels with each detection carrying its track's caption (texts, `label`, `lang`, `prompt_label`)
    for the segment holding the frame, or for the next segment on frames tracked back before a caption starts:
    FiftyOne's video Model API stores frame-level labels only, so there is no sample field for the captions."""
    by_track: dict[int, list] = {}
    for caption in captions.detections:
        by_track.setdefault(caption.index, []).append(caption)
    for number, detections in frames.items():
        for detection in detections.detections:
            following = [c for c in by_track.get(detection.index, []) if c.support[1] >= number]
            if not following:
                continue  # tracked past the last segment (memory carry): no caption covers it
            caption = min(following, key=lambda c: c.support[0])
            for name, value in caption.iter_fields():
                if name not in ("id", "tags", "support", "confidence", "index") and value is not None:
                    detection.set_field(name, value)
    return frames


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
