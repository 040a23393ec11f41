"""What a video run returns: per-frame object masks (as COCO RLE, so a long run stays small) and per-segment
captions, each serialisable with `to_dict`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..prompts import Box, RegionLike
from ..rle import rle_to_mask
from .segments import Segment
from .sources import VideoInfo


@dataclass
class VideoPrompt:
    """An object to track: its region prompt and the frame the prompt sits on."""

    region: RegionLike
    frame: int = 0


@dataclass
class ObjectFrame:
    """One tracked object on one frame."""

    object: int  # index of the object's prompt
    frame: int
    time: Optional[float]
    object_score: float  # SAM 2's object-presence logit (> 0: present)
    mask_score: float  # SAM 2's predicted IoU of the mask
    box: Optional[Box]  # tight xyxy box around the mask, None when empty
    rle: dict = field(repr=False)  # the mask, see mask_to_rle

    @property
    def mask(self) -> np.ndarray:
        return rle_to_mask(self.rle)

    def to_dict(self) -> dict:
        return {"object": self.object, "frame": self.frame, "time": self.time, "object_score": self.object_score,
                "mask_score": self.mask_score, "box": list(self.box) if self.box else None, "rle": self.rle}


@dataclass
class SegmentCaption:
    """What PAM says about one object over one segment."""

    object: int
    start_frame: int  # first frame the object was tracked in this segment (its conditioning frame)
    end_frame: int
    start_time: Optional[float]
    end_time: Optional[float]  # end of the last frame
    llm_frames: list[int]  # the 16 frames the LLM read (absolute indices; short clips repeat frames)
    prompt: str  # what conditioned the first frame: box / points / mask, "previous box", "memory"
    task: str
    lang: str
    text: str
    token_ids: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "token_ids"}


@dataclass
class VideoResult:
    info: VideoInfo
    segments: list[Segment]
    captions: list[SegmentCaption]
    frames: list[ObjectFrame] = field(repr=False)  # empty with keep_frames=False

    def masks(self, obj: int) -> dict[int, np.ndarray]:
        """Frame index -> boolean mask of one object (decoded from the kept RLE)."""
        return {f.frame: f.mask for f in self.frames if f.object == obj}
