"""The video driver: SAM 2 tracks prompted objects through a clip and PAM captions each time segment.

The reference (`SAM2VisionTower.forward_video`) loads every frame at 1024x1024 onto the GPU, keeps SAM 2's
memory of every frame, prompts frame 0 only and refuses clips under 16 frames. Here frames stream from the
decoder one at a time, SAM 2's memory bank keeps only the frames its memory attention can still read (see
`tracker`), and only the Perceiver output of the 16 frames the LLM reads is kept. Memory therefore does not
grow with the clip length. For a prompt on frame 0 the numbers are those of the reference (`pam parity`).
A prompt on a later frame is also tracked backward to the start of its segment (box carry) or of the video
(memory carry), as SAM 2's `propagate_in_video(reverse=True)` does; those earlier frames have streamed past
by then, so they are spooled to a temporary folder on a first pass.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import PromptError, SettingsError
from ..generation import Generation, GenerationSettings
from ..model import PAMModel
from ..progress import Progress
from ..prompts import Box, Region, RegionLike, as_region, mask_box
from ..rle import mask_to_rle
from ..segmenter import Segmentation
from ..tasks import VIDEO_CAPTION, Task
from .results import ObjectFrame, SegmentCaption, VideoPrompt, VideoResult
from .segments import Segment, VideoSettings, llm_frame_indices, plan_segments
from .sources import FrameSource, VideoInfo, VideoLike, open_video
from .tracker import FrameFeatures, ObjectTracker, encode_frame, video_mask_logits

Generate = Callable[[Task, torch.Tensor, GenerationSettings], Generation]


def frame_visual_embeds(model: PAMModel, seg: Segmentation, first: bool) -> torch.Tensor:
    """One frame of the LLM's video input: [img][image_newline][sem (16)][semT_newline][frame_newline];
    1024 image tokens for the clip's first frame (2x2 shuffle), 256 for the others (4x4 + proj)."""
    scale = model.config.image_shuffle_factor if first else model.config.video_shuffle_factor
    _, image_tokens, sem_tokens = model.perceive(seg, scale)
    return torch.cat([image_tokens, model.image_newline[None], sem_tokens, model.semT_newline[None],
                      model.frame_newline[None]])


class ClipEmbeds:
    """Collects the visual embeddings of the LLM frames of one clip while its frames stream past."""

    def __init__(self, model: PAMModel, start: int, end: int, start_time: Optional[float] = None):
        self.model, self.start, self.end, self.start_time = model, start, end, start_time
        self.selected = llm_frame_indices(end - start + 1, model.config.video_num_frames)
        self._parts: dict[tuple[int, bool], torch.Tensor] = {}

    @property
    def frames(self) -> list[int]:
        return [self.start + i for i in self.selected]

    def add(self, frame: int, seg: Segmentation) -> None:
        rel = frame - self.start
        for position, index in enumerate(self.selected):
            key = (index, position == 0)
            if index == rel and key not in self._parts:
                self._parts[key] = frame_visual_embeds(self.model, seg, first=position == 0)

    def visual_embeds(self) -> torch.Tensor:
        return torch.cat([self._parts[(index, position == 0)] for position, index in enumerate(self.selected)])


@dataclass(eq=False)
class _ObjectTrack:
    """One prompted object. Its state changes as the frames stream past: the SAM 2 tracker (restarted at each
    segment with box carry), the caption clip being collected, the last box it was seen in (the next
    segment's prompt with box carry) and its last caption (the next caption's history)."""

    index: int  # of its prompt
    region: Region  # the prompt, validated for the video
    frame: int  # the frame the prompt sits on
    span: Segment  # the frames its prompt tracks: its segment (box carry) or the whole video (memory carry)
    carry: str
    model: PAMModel = field(repr=False)
    info: VideoInfo
    tracker: Optional[ObjectTracker] = field(default=None, init=False)
    clip: Optional[ClipEmbeds] = field(default=None, init=False)
    clip_prompt: str = field(default="", init=False)  # what conditioned the clip's first frame
    history: Optional[str] = None  # the caption before its first segment's; then its own last caption
    last_box: Optional[Box] = field(default=None, init=False)

    def is_tracked(self, index: int, segment: Optional[Segment]) -> bool:
        """From the prompt frame on: inside segments with box carry, on every frame with memory carry."""
        return index >= self.frame and (segment is not None or self.carry == "memory")

    def step(self, index: int, time: Optional[float], features: FrameFeatures,
             segment: Optional[Segment]) -> ObjectFrame:
        """Track one frame, first starting a tracker and a caption clip where one begins on it."""
        prompt = self._start(index, time, segment)
        seg = self.tracker.step(features, prompt, self.info.width, self.info.height)
        tracked = self._object_frame(index, time, seg)
        self.last_box = tracked.box or self.last_box
        if self.clip is not None:
            self.clip.add(index, seg)
        return tracked

    def clip_ends_at(self, index: int) -> bool:
        return self.clip is not None and index == self.clip.end

    def caption(self, generate: Generate, task: Task, generation: GenerationSettings,
                end_time: Optional[float]) -> SegmentCaption:
        """Caption the clip that ended, with the previous caption as history (the clip is done with)."""
        clip, self.clip = self.clip, None
        asked = task.with_history(self.history)
        gen = generate(asked, clip.visual_embeds(), generation)
        self.history = gen.text
        if end_time is not None and self.info.fps:
            end_time += 1.0 / self.info.fps
        return SegmentCaption(self.index, clip.start, clip.end, clip.start_time, end_time, clip.frames,
                              self.clip_prompt, asked.name, task.lang, gen.text, gen.token_ids)

    def track_back(self, image: Image.Image,
                   earlier: Callable[[int], tuple[Image.Image, Optional[float]]]) -> Iterator[ObjectFrame]:
        """The frames before the prompt frame (`image`) back to the start of the span, last first, tracked from
        the prompt on a tracker of their own (the forward track is unchanged); `earlier(index)` gives a past
        frame and its time."""
        segmenter = self.model.segmenter
        tracker = ObjectTracker(segmenter, len(self.span))
        tracker.step(encode_frame(segmenter, image), self.region, self.info.width, self.info.height)
        for past in range(self.frame - 1, self.span.start - 1, -1):
            past_image, time = earlier(past)
            yield self._object_frame(past, time, tracker.step(encode_frame(segmenter, past_image)))

    def _start(self, index: int, time: Optional[float], segment: Optional[Segment]) -> Optional[Region]:
        """Starts a tracker (and a caption clip) where one begins on this frame; returns the prompt to apply."""
        segmenter = self.model.segmenter
        prompt = None
        if index == self.frame:
            self.tracker = ObjectTracker(segmenter, len(self.span))
            prompt, self.clip_prompt = self.region, self.region.kind
        elif self.carry == "box" and index == segment.start:
            if self.last_box is not None:  # the reference: re-prompt with the previous segment's last box
                self.tracker = ObjectTracker(segmenter, len(segment))
                prompt = Region.from_box(self.last_box).validated(self.info.width, self.info.height)
                self.clip_prompt = "previous box"
            else:  # the object was lost before the segment: keep SAM 2's memory instead
                self.clip_prompt = "memory (object lost)"
        elif self.carry == "memory" and segment is not None and index == segment.start:
            self.clip_prompt = "memory"
        if segment is not None and (index == self.frame or index == segment.start):
            self.clip = ClipEmbeds(self.model, index, segment.end, time)
        return prompt

    def _object_frame(self, index: int, time: Optional[float], seg: Segmentation) -> ObjectFrame:
        mask = (video_mask_logits(seg, self.info.height, self.info.width) > 0).cpu().numpy()
        return ObjectFrame(self.index, index, time, seg.object_score, seg.mask_score, mask_box(mask), mask_to_rle(mask))


def describe_video(model: PAMModel, generate: Generate, video: VideoLike | FrameSource,
                   prompts: Sequence[RegionLike | VideoPrompt], settings: VideoSettings = VideoSettings(),
                   generation: GenerationSettings = GenerationSettings(), fps: Optional[float] = None,
                   progress: Optional[Progress] = None,
                   on_frame: Optional[Callable[[list[ObjectFrame]], None]] = None,
                   on_caption: Optional[Callable[[SegmentCaption], None]] = None,
                   keep_frames: bool = True, history: Optional[str] = None) -> VideoResult:
    """Track every prompted object through the video and caption it per segment with `generate` (one
    region's text from its visual embeddings); see `PAM.describe_video`."""
    task = settings.caption_task
    _check_history(history, task)
    source = open_video(video, fps)
    info = source.info
    plan = plan_segments(info.num_frames, settings.segments, settings.window)
    tracks = _object_tracks(prompts, settings, info, plan, model, history)
    captions: list[SegmentCaption] = []
    kept: list[ObjectFrame] = []
    remaining = iter(plan)
    ahead: Optional[Segment] = next(remaining)  # the first segment not yet passed
    behind = [t for t in tracks if t.span.start < t.frame] if settings.backward else []
    total = info.num_frames + sum(t.frame - t.span.start for t in behind)
    earlier = _track_backward(source, behind, total, progress)
    done = total - info.num_frames

    for index, image, time in source.frames():
        while ahead is not None and index > ahead.end:
            ahead = next(remaining, None)
        segment = ahead if ahead is not None and index in ahead else None
        active = [t for t in tracks if t.is_tracked(index, segment)]
        tracked = earlier.pop(index, [])
        features = encode_frame(model.segmenter, image) if active else None
        for track in active:
            tracked.append(track.step(index, time, features, segment))
            if track.clip_ends_at(index):
                captions.append(track.caption(generate, task, generation, time))
                if on_caption:
                    on_caption(captions[-1])
        tracked.sort(key=lambda t: t.object)
        if tracked and on_frame:
            on_frame(tracked)
        if keep_frames:
            kept.extend(tracked)
        if progress:
            progress(done + index + 1, total, f"frame {index + 1}/{info.num_frames}")
    return VideoResult(info, plan, captions, kept)


def _check_history(history: Optional[str], task: Task) -> None:
    """A history only means something to the video caption task, whose prompt carries it."""
    if history is None:
        return
    if not isinstance(history, str):
        raise SettingsError(f"history must be the previous caption (a string) or None, got {type(history).__name__}")
    if task.with_history(history) is task:  # other tasks come back unchanged
        raise SettingsError(f"history conditions the video caption task ({VIDEO_CAPTION!r}) only; task "
                            f"{task.key!r} has no previous caption in its prompt")


def _object_tracks(prompts, settings: VideoSettings, info: VideoInfo, plan: list[Segment],
                   model: PAMModel, history: Optional[str]) -> list[_ObjectTrack]:
    """One track per prompt; every prompt is checked against the video and the segment plan before any
    frame is tracked."""
    if isinstance(prompts, (Region, dict, VideoPrompt)):
        prompts = [prompts]
    if not prompts:
        raise PromptError("give at least one object prompt (a box, points or a mask)")
    tracks = []
    for index, item in enumerate(prompts):
        prompt = item if isinstance(item, VideoPrompt) else VideoPrompt(item, settings.frame)
        if not isinstance(prompt.frame, (int, np.integer)) or not 0 <= prompt.frame < info.num_frames:
            raise PromptError(f"object {index}: prompt frame {prompt.frame} is not a frame of the video "
                              f"(0-{info.num_frames - 1})")
        if settings.carry == "box" and not any(int(prompt.frame) in s for s in plan):
            raise PromptError(f"object {index}: prompt frame {prompt.frame} lies outside every segment; with "
                              "carry='box' tracking only runs inside segments")
        region = as_region(prompt.region).validated(info.width, info.height)
        at = int(prompt.frame)
        span = next(s for s in plan if at in s) if settings.carry == "box" else Segment(0, info.num_frames - 1)
        tracks.append(_ObjectTrack(index, region, at, span, settings.carry, model, info, history=history))
    return tracks


def _track_backward(source: FrameSource, tracks: list[_ObjectTrack], total: int,
                    progress: Optional[Progress]) -> dict[int, list[ObjectFrame]]:
    """The frames before each later prompt, tracked back from it (`_ObjectTrack.track_back`), by frame index.
    A first pass spools the frames in between to a temporary folder, uncompressed, so that the numbers are
    those of the frames themselves, and reads them back in reverse order."""
    found: dict[int, list[ObjectFrame]] = defaultdict(list)
    if not tracks:
        return found
    info, done = source.info, 0
    spool_from, last_prompt = min(t.span.start for t in tracks), max(t.frame for t in tracks)
    with tempfile.TemporaryDirectory(prefix="pam-video-") as folder:
        spool, times = Path(folder), {}

        def earlier(index: int) -> tuple[Image.Image, Optional[float]]:
            return Image.fromarray(np.load(spool / f"{index}.npy")), times[index]

        for index, image, time in source.frames():
            times[index] = time
            if spool_from <= index < last_prompt:
                np.save(spool / f"{index}.npy", np.asarray(image))
            for track in (t for t in tracks if t.frame == index):
                for tracked in track.track_back(image, earlier):
                    found[tracked.frame].append(tracked)
                    done += 1
                    if progress:
                        progress(done, total, f"object {track.index}: frame {tracked.frame + 1}/{info.num_frames} "
                                              f"(tracking back from frame {index + 1})")
            if index >= last_prompt:
                break
    return found
