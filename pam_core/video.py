"""Video: SAM 2 tracks prompted objects through a clip and PAM captions each time segment.

The reference (`SAM2VisionTower.forward_video`) loads every frame at 1024x1024 onto the GPU, keeps SAM 2's
memory of every frame, prompts frame 0 only and refuses clips under 16 frames. Here frames stream from the
decoder one at a time, SAM 2's memory bank keeps only the frames its memory attention can still read
(the conditioning frame, the last `num_maskmem` frames and the last `max_obj_ptrs_in_encoder` object
pointers), and only the Perceiver output of the 16 frames the LLM reads is kept. Memory therefore does not
grow with the clip length. For a prompt on frame 0 the numbers are those of the reference (`pam parity`).
A prompt on a later frame is also tracked backward to the start of its segment, as SAM 2's
`propagate_in_video(reverse=True)` does; those earlier frames have streamed past by then, so they are
spooled to a temporary folder on the first pass.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .engine import PAM, Progress
from .generation import GenerationSettings
from .errors import ImageError, PromptError, TaskError, VideoError
from .io import ImageLike, load_image
from .model import PAMModel
from .prompts import Box, Region, RegionLike, as_region, mask_box
from .rle import mask_to_rle, rle_to_mask
from .segmenter import SAM2Segmenter, Segmentation, llm_mask_tokens, preprocess
from .tasks import Task, resolve_task, video_caption_task

VideoLike = Union[str, os.PathLike, Sequence[ImageLike], np.ndarray]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
CARRY_MODES = ("box", "memory")


# ----------------------------------------------------------------------------------------------- frames

@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    width: int
    height: int
    fps: Optional[float]  # None when unknown (frame folders and arrays without `fps`)


class FrameSource:
    """Frames of one video, decoded one at a time: (index, RGB image, time in seconds or None)."""

    info: VideoInfo

    def frames(self) -> Iterator[tuple[int, Image.Image, Optional[float]]]:
        raise NotImplementedError


class _ImageSequence(FrameSource):
    """A folder of image files or a sequence of arrays/images; frames are loaded when they are reached."""

    def __init__(self, items: Sequence, fps: Optional[float], what: str):
        if len(items) == 0:
            raise VideoError(f"{what} has no frames")
        self.items, self.what = items, what
        first = self._load(0)
        self.info = VideoInfo(len(items), first.width, first.height, fps)

    def _load(self, index: int) -> Image.Image:
        try:
            return load_image(self.items[index])
        except ImageError as exc:
            raise VideoError(f"frame {index} of {self.what}: {exc}") from exc

    def frames(self):
        for index in range(self.info.num_frames):
            image = self._load(index)
            if image.size != (self.info.width, self.info.height):
                raise VideoError(f"frame {index} of {self.what} is {image.width}x{image.height}, "
                                 f"frame 0 is {self.info.width}x{self.info.height}: all frames must have one size")
            yield index, image, index / self.info.fps if self.info.fps else None


class _VideoFile(FrameSource):
    """A video file decoded with PyAV (FFmpeg); the frame count comes from a decoding pass, which is exact."""

    def __init__(self, path: Path):
        try:
            import av
        except ImportError as exc:
            raise VideoError("reading video files needs PyAV: pip install 'pam-suite[video]' (or pip install av)") from exc
        self.path, self._av = path, av
        count, first, rate = 0, None, None
        with self._open() as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else None
            for frame in self._decode(container):
                first = first or (frame.width, frame.height)
                count += 1
        if count == 0:
            raise VideoError(f"video {path} has no frames")
        self.info = VideoInfo(count, first[0], first[1], rate)

    def _open(self):
        try:
            container = self._av.open(str(self.path), metadata_errors="replace")  # a non-UTF-8 tag is no failure
        except (self._av.FFmpegError, OSError, ValueError) as exc:
            raise VideoError(f"cannot read video {self.path}: {exc}") from exc
        if not container.streams.video:
            container.close()
            raise VideoError(f"{self.path} has no video stream")
        return container

    def _decode(self, container):
        try:
            yield from container.decode(video=0)
        except (self._av.FFmpegError, OSError, ValueError) as exc:
            raise VideoError(f"cannot decode video {self.path}: {exc}") from exc

    def frames(self):
        with self._open() as container:
            for index, frame in enumerate(self._decode(container)):
                if index >= self.info.num_frames:
                    break
                yield index, frame.to_image().convert("RGB"), frame.time


def open_video(video: VideoLike | FrameSource, fps: Optional[float] = None) -> FrameSource:
    """A video file (mp4/webm/mov/..., via PyAV), a folder of frame images (sorted by the numbers in their
    names), or a sequence of images/arrays (also a (T, H, W[, C]) array). `fps` gives folders and
    sequences timestamps; a file's own frame times are used."""
    if isinstance(video, FrameSource):
        return video
    if fps is not None and not fps > 0:
        raise VideoError(f"fps must be > 0, got {fps}")
    if isinstance(video, (str, os.PathLike)):
        path = Path(video)
        if path.is_dir():
            files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
            if not files:
                raise VideoError(f"folder {path} holds no frame images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            return _ImageSequence(files, fps, f"folder {path}")
        if not path.is_file():
            raise VideoError(f"video not found: {path}")
        return _VideoFile(path)
    if isinstance(video, (np.ndarray, torch.Tensor)) or isinstance(video, Sequence):
        return _ImageSequence(video, fps, "the frame sequence")
    raise VideoError(f"unsupported video type {type(video).__name__}; pass a file, a folder or a sequence of frames")


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


# --------------------------------------------------------------------------------------------- segments

@dataclass(frozen=True)
class Segment:
    start: int  # first frame (inclusive)
    end: int  # last frame (inclusive)

    def __contains__(self, frame: int) -> bool:
        return self.start <= frame <= self.end


def parse_segments(text: str) -> list[tuple[int, int]]:
    """ "0-31,32-63" -> [(0, 31), (32, 63)] (inclusive frame ranges)."""
    ranges = []
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)-(\d+)", part)
        if not match:
            raise VideoError(f"segment {part!r} must look like START-END (inclusive frame numbers, e.g. 0-31)")
        ranges.append((int(match.group(1)), int(match.group(2))))
    return ranges


def plan_segments(num_frames: int, segments: Optional[Sequence[tuple[int, int]]] = None,
                  window: Optional[int] = None) -> list[Segment]:
    """The caption segments: given ranges (ascending, not overlapping; an end past the video is cut to its
    last frame), fixed windows of `window` frames, or the whole video."""
    if segments is not None and window is not None:
        raise VideoError("give segments or a window, not both")
    if window is not None:
        if window < 1:
            raise VideoError(f"window must be at least 1 frame, got {window}")
        return [Segment(s, min(s + window, num_frames) - 1) for s in range(0, num_frames, window)]
    if not segments:
        return [Segment(0, num_frames - 1)]
    plan = []
    for start, end in segments:
        if start > end:
            raise VideoError(f"segment {start}-{end} ends before it starts")
        if start >= num_frames:
            raise VideoError(f"segment {start}-{end} starts after the last frame ({num_frames - 1})")
        if plan and start <= plan[-1].end:
            raise VideoError(f"segment {start}-{end} overlaps or precedes {plan[-1].start}-{plan[-1].end}: "
                             "segments must be ascending and disjoint")
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


# --------------------------------------------------------------------------------------------- tracking

@dataclass
class FrameFeatures:
    """SAM 2 backbone output of one frame (device tensors), shared by every object tracked on it."""

    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    sizes: list[tuple[int, int]]


@torch.inference_mode()
def encode_frame(segmenter: SAM2Segmenter, image: Image.Image) -> FrameFeatures:
    sam = segmenter.model
    backbone_out = sam.forward_image(preprocess(image, segmenter.image_size).to(segmenter.device))
    _, feats, pos, sizes = sam._prepare_backbone_features(backbone_out)
    return FrameFeatures(feats, pos, sizes)


class ObjectTracker:
    """One object tracked by SAM 2 from a prompt on its first frame, as `SAM2VideoPredictor` does it
    (`add_new_points_or_box`/`add_new_mask`, then `propagate_in_video`), with a bounded memory bank.

    Frame indices count steps away from the prompt frame, so the same tracker runs forward or, fed the
    frames in reverse order, backward: SAM 2's reverse tracking mirrors its forward rules (memory from the
    frames after, object pointers at the same distances). `num_frames` is the clip length the predictor
    would have been given (it scales the temporal encoding of object pointers).
    """

    def __init__(self, segmenter: SAM2Segmenter, num_frames: int):
        self.segmenter = segmenter
        self.num_frames = num_frames
        self.memory: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        self.next_frame = 0
        self._memory_pos: Optional[list[torch.Tensor]] = None  # the same for every frame: one copy, as the predictor
        sam = segmenter.model
        stride = getattr(sam, "memory_temporal_stride_for_eval", 1)
        self._history = max(sam.max_obj_ptrs_in_encoder, stride * sam.num_maskmem) + 1

    @torch.inference_mode()
    def step(self, frame: FrameFeatures, prompt: Optional[Region] = None, width: int = 0,
             height: int = 0) -> Segmentation:
        """Track the next frame; the first call needs the `prompt` (validated for a width x height video)."""
        if (self.next_frame == 0) != (prompt is not None):
            raise ValueError("the prompt goes on the tracker's first frame, and only there")
        sam, seg = self.segmenter.model, self.segmenter
        index, is_prompt = self.next_frame, prompt is not None
        points = masks = None
        if is_prompt and prompt.mask is not None:
            masks = seg._mask_input(prompt.mask)
        elif is_prompt:
            points = {k: v.to(seg.device) for k, v in prompt.sam_point_inputs(width, height, seg.image_size).items()}
        with seg._tap_decoder() as tap:
            # The predictor encodes a prompted frame's memory later, from the consolidated mask (below).
            out = sam.track_step(
                frame_idx=index, is_init_cond_frame=is_prompt, current_vision_feats=frame.vision_feats,
                current_vision_pos_embeds=frame.vision_pos, feat_sizes=frame.sizes, point_inputs=points,
                mask_inputs=masks, output_dict=self.memory, num_frames=self.num_frames, run_mem_encoder=not is_prompt)
        if is_prompt:
            self._encode_prompt_memory(frame, out)
        if self._memory_pos is None:
            self._memory_pos = [x.clone() for x in out["maskmem_pos_enc"]]
        compact = {k: out[k] for k in ("maskmem_features", "pred_masks", "obj_ptr", "object_score_logits")}
        compact["maskmem_pos_enc"] = self._memory_pos
        self.memory["cond_frame_outputs" if is_prompt else "non_cond_frame_outputs"][index] = compact
        self.memory["non_cond_frame_outputs"].pop(index - self._history, None)
        self.next_frame += 1
        tokens, stability, selected = llm_mask_tokens(sam.sam_mask_decoder, tap)
        return Segmentation(
            low_res_logits=out["pred_masks"].float(), mask_score=float(tap["ious"][0, 0]),
            object_score=float(out["object_score_logits"][0, 0]), mid_image_embed=tap["src"],
            mid_mask_tokens=tokens, all_mask_tokens=tap["mask_tokens"], stability=float(stability[0]),
            selected_token=int(selected[0]), input_mask=prompt.mask if is_prompt else None)

    def _encode_prompt_memory(self, frame: FrameFeatures, out: dict) -> None:
        """`propagate_in_video_preflight`: the memory of a prompted frame comes from its low-res mask
        upsampled to SAM's input size, encoded as a mask from points, and is stored in bfloat16."""
        sam = self.segmenter.model
        size = sam.image_size
        high_res = F.interpolate(out["pred_masks"], size=(size, size), mode="bilinear", align_corners=False)
        features, pos = sam._encode_new_memory(
            current_vision_feats=frame.vision_feats, feat_sizes=frame.sizes, pred_masks_high_res=high_res,
            object_score_logits=out["object_score_logits"], is_mask_from_pts=True)
        out["maskmem_features"], out["maskmem_pos_enc"] = features.to(torch.bfloat16), pos


def video_mask_logits(seg: Segmentation, height: int, width: int) -> torch.Tensor:
    """(H, W) logits at video resolution (the predictor's `_get_orig_video_res_output`)."""
    return F.interpolate(seg.low_res_logits, size=(height, width), mode="bilinear", align_corners=False)[0, 0]


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


# ---------------------------------------------------------------------------------------------- results

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


# ----------------------------------------------------------------------------------------------- driver

@dataclass
class _Object:
    index: int
    region: Region
    frame: int
    first: int  # the first and last frames its prompt tracks: its segment (box carry) or the video (memory)
    last: int
    tracker: Optional[ObjectTracker] = None
    clip: Optional[ClipEmbeds] = None
    clip_prompt: str = ""
    last_box: Optional[Box] = None
    history: Optional[str] = None


def describe_video(pam: PAM, video: VideoLike | FrameSource, prompts: Sequence[RegionLike | VideoPrompt],
                   frame: int = 0, task: str = "caption", lang: str = "en",
                   segments: Optional[Sequence[tuple[int, int]]] = None, window: Optional[int] = None,
                   carry: str = "box", backward: bool = True, generation: GenerationSettings = GenerationSettings(),
                   fps: Optional[float] = None, progress: Optional[Progress] = None,
                   on_frame: Optional[Callable[[list[ObjectFrame]], None]] = None,
                   on_caption: Optional[Callable[[SegmentCaption], None]] = None,
                   keep_frames: bool = True) -> VideoResult:
    """Track every prompted object through the video and caption it per segment; see `PAM.describe_video`."""
    if carry not in CARRY_MODES:
        raise VideoError(f"carry must be one of {', '.join(CARRY_MODES)}, got {carry!r}")
    task_for = segment_task(task, lang)
    source = open_video(video, fps)
    info = source.info
    plan = plan_segments(info.num_frames, segments, window)
    objects = _objects(prompts, frame, info, plan, carry)
    model = pam.model
    captions: list[SegmentCaption] = []
    kept: list[ObjectFrame] = []
    remaining = iter(plan)
    ahead: Optional[Segment] = next(remaining)  # the first segment not yet passed
    behind = [o for o in objects if o.first < o.frame] if backward else []
    total = info.num_frames + sum(o.frame - o.first for o in behind)
    earlier = _track_backward(model, source, behind, total, progress)
    done = total - info.num_frames

    for index, image, time in source.frames():
        while ahead is not None and index > ahead.end:
            ahead = next(remaining, None)
        segment = ahead if ahead is not None and index in ahead else None
        active = [o for o in objects if index >= o.frame and (segment is not None or carry == "memory")]
        tracked = earlier.pop(index, [])
        features = encode_frame(model.segmenter, image) if active else None
        for obj in active:
            prompt = _start_tracking(obj, index, time, segment, carry, info, model)
            seg = obj.tracker.step(features, prompt, info.width, info.height)
            tracked.append(_object_frame(obj, index, time, seg, info))
            obj.last_box = tracked[-1].box or obj.last_box
            if obj.clip is not None:
                obj.clip.add(index, seg)
                if index == obj.clip.end:
                    captions.append(_caption(pam, obj, task_for, lang, generation, time, info))
                    obj.clip = None
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


def _track_backward(model: PAMModel, source: FrameSource, objects: list[_Object], total: int,
                    progress: Optional[Progress]) -> dict[int, list[ObjectFrame]]:
    """Masks of the frames between each object's first frame and its later prompt frame, tracked from the
    prompt backward on a tracker of their own (so the forward track is unchanged). The frames come back in
    reverse order from a temporary folder (uncompressed, so the numbers are those of the frames themselves)."""
    found: dict[int, list[ObjectFrame]] = defaultdict(list)
    if not objects:
        return found
    info, segmenter, done = source.info, model.segmenter, 0
    spool_from, last_prompt = min(o.first for o in objects), max(o.frame for o in objects)
    with tempfile.TemporaryDirectory(prefix="pam-video-") as folder:
        spool, times = Path(folder), {}
        for index, image, time in source.frames():
            times[index] = time
            if spool_from <= index < last_prompt:
                np.save(spool / f"{index}.npy", np.asarray(image))
            for obj in (o for o in objects if o.frame == index):
                tracker = ObjectTracker(segmenter, obj.last - obj.first + 1)
                tracker.step(encode_frame(segmenter, image), obj.region, info.width, info.height)
                for past in range(index - 1, obj.first - 1, -1):
                    seg = tracker.step(encode_frame(segmenter, Image.fromarray(np.load(spool / f"{past}.npy"))))
                    found[past].append(_object_frame(obj, past, times[past], seg, info))
                    done += 1
                    if progress:
                        progress(done, total, f"object {obj.index}: frame {past + 1}/{info.num_frames} "
                                              f"(tracking back from frame {index + 1})")
            if index >= last_prompt:
                break
    return found


def _object_frame(obj: _Object, index: int, time: Optional[float], seg: Segmentation, info: VideoInfo) -> ObjectFrame:
    mask = (video_mask_logits(seg, info.height, info.width) > 0).cpu().numpy()
    return ObjectFrame(obj.index, index, time, seg.object_score, seg.mask_score, mask_box(mask), mask_to_rle(mask))


def segment_task(task: str, lang: str) -> Callable[[Optional[str]], Task]:
    """"caption" is the reference's video task (conditioned on the previous caption); any other task name or
    free instruction is asked as is (the released weights were trained on "caption" for video)."""
    if task == "caption":
        video_caption_task(lang)  # checks the language now
        return lambda history: video_caption_task(lang, history)
    if task == "video_caption":
        raise TaskError("the video caption task is called 'caption'")
    resolved = resolve_task(task, lang)
    return lambda history: resolved


def _objects(prompts, frame: int, info: VideoInfo, plan: list[Segment], carry: str) -> list[_Object]:
    if isinstance(prompts, (Region, dict, VideoPrompt)):
        prompts = [prompts]
    if not prompts:
        raise PromptError("give at least one object prompt (a box, points or a mask)")
    objects = []
    for index, item in enumerate(prompts):
        prompt = item if isinstance(item, VideoPrompt) else VideoPrompt(item, frame)
        if not isinstance(prompt.frame, (int, np.integer)) or not 0 <= prompt.frame < info.num_frames:
            raise PromptError(f"object {index}: prompt frame {prompt.frame} is not a frame of the video "
                              f"(0-{info.num_frames - 1})")
        if carry == "box" and not any(int(prompt.frame) in s for s in plan):
            raise PromptError(f"object {index}: prompt frame {prompt.frame} lies outside every segment; with "
                              "carry='box' tracking only runs inside segments")
        region = as_region(prompt.region).validated(info.width, info.height)
        at = int(prompt.frame)
        tracked = next(s for s in plan if at in s) if carry == "box" else Segment(0, info.num_frames - 1)
        objects.append(_Object(index, region, at, tracked.start, tracked.end))
    return objects


def _start_tracking(obj: _Object, index: int, time: Optional[float], segment: Optional[Segment], carry: str,
                    info: VideoInfo, model: PAMModel) -> Optional[Region]:
    """Starts a tracker (and a caption clip) where one begins on this frame; returns the prompt to apply."""
    segmenter = model.segmenter
    prompt = None
    if index == obj.frame:
        obj.tracker = ObjectTracker(segmenter, obj.last - obj.first + 1)
        prompt, obj.clip_prompt = obj.region, obj.region.kind
    elif carry == "box" and index == segment.start:
        if obj.last_box is not None:  # the reference: re-prompt with the previous segment's last box
            obj.tracker = ObjectTracker(segmenter, segment.end - index + 1)
            prompt, obj.clip_prompt = Region.from_box(obj.last_box).validated(info.width, info.height), "previous box"
        else:  # the object was lost before the segment: keep SAM 2's memory instead
            obj.clip_prompt = "memory (object lost)"
    elif carry == "memory" and segment is not None and index == segment.start:
        obj.clip_prompt = "memory"
    if segment is not None and (index == obj.frame or index == segment.start):
        obj.clip = ClipEmbeds(model, index, segment.end, time)
    return prompt


def _caption(pam: PAM, obj: _Object, task_for, lang: str, generation: GenerationSettings,
             end_time: Optional[float], info: VideoInfo) -> SegmentCaption:
    clip = obj.clip
    task = task_for(obj.history)
    gen = pam.generate(task, clip.visual_embeds(), generation)
    obj.history = gen.text
    if end_time is not None and info.fps:
        end_time += 1.0 / info.fps
    return SegmentCaption(obj.index, clip.start, clip.end, clip.start_time, end_time, clip.frames, obj.clip_prompt,
                          task.name, lang, gen.text, gen.token_ids)
