"""Frame sources: a video file, a folder of frame images or a sequence of frames, decoded one frame at a time
so that a run never holds the whole clip."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..errors import ImageError, VideoError
from ..io import ImageLike, load_image

VideoLike = Union[str, os.PathLike, Sequence[ImageLike], np.ndarray]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


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
            raise VideoError("reading video files needs PyAV: "
                             "pip install 'pam-suite[video]' (or pip install av)") from exc
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
