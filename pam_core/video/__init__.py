"""Video: SAM 2 tracks prompted objects through a clip and PAM captions each time segment.

`sources` decodes frames one at a time, `segments` plans which frames each caption covers (and holds the
validated `VideoSettings`), `tracker` runs SAM 2's video tracking with a bounded memory, `results` holds what
a run returns, and `pipeline` drives them (`describe_video`, behind `PAM.describe_video`); its docstring says
why memory stays bounded however long the clip, and how a prompt on a later frame is tracked backward.
"""

from ..rle import mask_to_rle, rle_to_mask
from .pipeline import describe_video
from .results import ObjectFrame, SegmentCaption, VideoPrompt, VideoResult
from .segments import CARRY_MODES, Segment, VideoSettings, llm_frame_indices, parse_segments, plan_segments
from .sources import FrameSource, VideoInfo, VideoLike, open_video

__all__ = [
    "describe_video", "ObjectFrame", "SegmentCaption", "VideoPrompt", "VideoResult", "mask_to_rle", "rle_to_mask",
    "CARRY_MODES", "Segment", "VideoSettings", "llm_frame_indices", "parse_segments", "plan_segments",
    "FrameSource", "VideoInfo", "VideoLike", "open_video",
]
