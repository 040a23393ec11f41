"""Segments: which frames each caption covers, and the validated settings of a video run."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import numpy as np

from ..errors import PromptError, SettingsError, VideoError
from ..tasks import VIDEO_CAPTION, Task, resolve_video_task

CARRY_MODES = ("box", "memory")


@dataclass(frozen=True)
class Segment:
    start: int  # first frame (inclusive)
    end: int  # last frame (inclusive)

    def __contains__(self, frame: int) -> bool:
        return self.start <= frame <= self.end

    def __len__(self) -> int:
        return self.end - self.start + 1

def parse_segments(text: str) -> list[tuple[int, int]]:
    """ "0-31,32-63" -> [(0, 31), (32, 63)] (inclusive frame ranges)."""
    ranges = []
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)-(\d+)", part)
        if not match:
            raise VideoError(f"segment {part!r} must look like START-END (inclusive frame numbers, e.g. 0-31)")
        ranges.append((int(match.group(1)), int(match.group(2))))
    return ranges


@dataclass(frozen=True)
class VideoSettings:
    """How a video run tracks and captions, validated once here for the API, the CLI and the host plugins.

    `frame`: the frame (0-based) prompts sit on unless a `VideoPrompt` names its own. `task`: "caption" (the
    video task PAM was trained on) or an image task / free instruction. `segments`: inclusive (start, end)
    frame ranges, or a string "0-31,32-63"; or `window` frames each; default the whole video. `carry`: "box"
    re-prompts each segment with the object's last box (the reference), "memory" keeps SAM 2's memory.
    `backward`: also track a prompt back to the start of its segment (box) or of the video (memory).
    """

    frame: int = 0
    task: str = VIDEO_CAPTION
    lang: str = "en"
    segments: Optional[tuple[tuple[int, int], ...]] = None
    window: Optional[int] = None
    carry: str = "box"
    backward: bool = True

    def __post_init__(self):
        if isinstance(self.segments, str):
            object.__setattr__(self, "segments", tuple(parse_segments(self.segments)))
        elif self.segments is not None:
            object.__setattr__(self, "segments", tuple((int(a), int(b)) for a, b in self.segments) or None)
        resolve_video_task(self.task, self.lang)
        if self.carry not in CARRY_MODES:
            raise VideoError(f"carry must be one of {', '.join(CARRY_MODES)}, got {self.carry!r}")
        if self.segments is not None and self.window is not None:
            raise VideoError("give segments or a window, not both")
        if self.window is not None and (not isinstance(self.window, (int, np.integer)) or self.window < 1):
            raise VideoError(f"window must be a whole number of frames >= 1, got {self.window!r}")
        if not isinstance(self.frame, (int, np.integer)) or self.frame < 0:
            raise PromptError(f"the prompt frame must be a frame number >= 0, got {self.frame!r}")
        previous = None
        for start, end in self.segments or ():
            if start < 0:
                raise VideoError(f"segment {start}-{end} starts before frame 0")
            if start > end:
                raise VideoError(f"segment {start}-{end} ends before it starts")
            if previous is not None and start <= previous[1]:
                raise VideoError(f"segment {start}-{end} overlaps or precedes {previous[0]}-{previous[1]}: "
                                 "segments must be ascending and disjoint")
            previous = (start, end)

    def replace(self, **changes) -> "VideoSettings":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise SettingsError(f"unknown video settings {sorted(unknown)}; use {[f.name for f in fields(self)]}")
        return replace(self, **changes) if changes else self

    @property
    def caption_task(self) -> Task:
        """The resolved task (for "caption": without history yet, see `Task.with_history`)."""
        return resolve_video_task(self.task, self.lang)


def plan_segments(num_frames: int, segments: Optional[Sequence[tuple[int, int]]] = None,
                  window: Optional[int] = None) -> list[Segment]:
    """The caption segments of a video of `num_frames`: the ranges of validated `VideoSettings` (an end past
    the video is cut to its last frame), fixed windows of `window` frames, or the whole video."""
    if window is not None:
        return [Segment(s, min(s + window, num_frames) - 1) for s in range(0, num_frames, window)]
    if not segments:
        return [Segment(0, num_frames - 1)]
    plan = []
    for start, end in segments:
        if start >= num_frames:
            raise VideoError(f"segment {start}-{end} starts after the last frame ({num_frames - 1})")
        plan.append(Segment(start, min(end, num_frames - 1)))
    return plan


def llm_frame_indices(num_frames: int, count: int = 16) -> list[int]:
    """Clip-relative frames the LLM reads. From 16 frames on, the reference's choice exactly:
    [0] + linspace(1, n-1, 15) truncated to integers. Shorter clips (the reference refuses them) take the
    same spacing rounded to the nearest frame, so frames repeat evenly and the LLM still reads the 16-frame
    layout it was trained on (a 1-frame clip shows frame 0 sixteen times)."""
    rest = np.linspace(min(1, num_frames - 1), num_frames - 1, count - 1)
    rest = rest.astype(int) if num_frames >= count else np.round(rest).astype(int)
    return [0] + [int(i) for i in rest]
