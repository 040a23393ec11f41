"""COCO run-length encoding of binary masks: pam_core's one codec, which checks every RLE before decoding it.

An RLE is {"size": [height, width], "counts": runs}: alternating runs of background and foreground pixels in
column-major order, starting with background. `counts` is a list of ints (uncompressed) or COCO's compressed
string. pycocotools decodes without checking that the runs cover height x width: a cut RLE leaves the rest
of the mask uninitialised (it differs from run to run) and a garbage string decodes to values up to 255.
Here the runs must be non-negative and sum exactly to height x width, or a PromptError says what is wrong.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from .errors import PromptError
from .io import PIXEL_LIMIT_ENV, max_image_pixels

_MAX_RUN = 2**32 - 1  # pycocotools keeps runs as uint32


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major runs, starting with background), as pycocotools/FiftyOne read it."""
    mask = np.asarray(mask, dtype=bool)
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    """The bool HxW mask of a checked RLE (uncompressed or compressed counts)."""
    height, width, counts = rle_counts(rle)
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((height, width), order="F")


def rle_counts(rle: dict) -> tuple[int, int, np.ndarray]:
    """Height, width and the runs of an RLE, checked to cover exactly height x width pixels."""
    if not isinstance(rle, dict) or not {"size", "counts"} <= set(rle):
        raise PromptError("a mask RLE must be an object with 'size' [height, width] and 'counts'")
    height, width = _size(rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        runs = _string_counts(counts)
    elif isinstance(counts, list) and all(isinstance(c, Integral) and not isinstance(c, bool) for c in counts):
        if any(not 0 <= c <= _MAX_RUN for c in counts):
            raise PromptError(f"RLE counts must be integers from 0 to {_MAX_RUN}, found {min(counts)}..{max(counts)}")
        runs = np.array(counts, dtype=np.int64)
    else:
        raise PromptError("RLE counts must be a list of integers or a COCO compressed string")
    if runs.size and (runs.min() < 0 or runs.max() > _MAX_RUN):
        raise PromptError(f"RLE counts must be integers from 0 to {_MAX_RUN}, the string decodes to "
                          f"{runs.min()}..{runs.max()}")
    total = int(runs.sum())
    if total != height * width:
        raise PromptError(f"RLE counts cover {total} pixels but its size {height}x{width} has {height * width}: "
                          "the RLE is cut short, too long or corrupt")
    return height, width, runs


def _size(size) -> tuple[int, int]:
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in size)):
        raise PromptError(f"a mask size must be two positive integers [height, width], got {size!r}")
    height, width = int(size[0]), int(size[1])
    limit = max_image_pixels()
    if limit is not None and height * width > limit:
        raise PromptError(f"a {height}x{width} mask has more than {limit} pixels, the limit for images and masks; "
                          f"set {PIXEL_LIMIT_ENV} to a larger number of pixels, or to 'none', to decode it")
    return height, width


def _string_counts(counts: str | bytes) -> np.ndarray:
    """The runs of COCO's compressed string (pycocotools' rleFrString): each value is 5-bit groups, low first,
    in characters 48..111 with bit 0x20 meaning "more follows" and bit 0x10 of the last one the sign; from
    the fourth value on, a value is the difference to the run two places before."""
    try:
        raw = counts.encode("ascii") if isinstance(counts, str) else counts
    except UnicodeEncodeError:
        raise PromptError("an RLE counts string must be ASCII (COCO's compressed format)") from None
    chars = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if ((chars < 0) | (chars > 63)).any():
        raise PromptError("an RLE counts string may only hold the characters '0' to 'o' (COCO's compressed format)")
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = (chars & 0x20) == 0  # the final character of each value
    if not last[-1]:
        raise PromptError("the RLE counts string is cut off in the middle of a value")
    starts = np.concatenate([[0], np.flatnonzero(last)[:-1] + 1])
    digit = np.arange(chars.size) - np.repeat(starts, np.diff(np.concatenate([starts, [chars.size]])))
    if digit.max() > 6:  # 7 groups hold 35 bits, more than any 32-bit run or difference needs
        raise PromptError("the RLE counts string holds a value longer than 7 characters")
    values = np.add.reduceat((chars & 0x1F) << (5 * digit), starts)
    ends = np.flatnonzero(last)
    negative = (chars[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (digit[ends][negative] + 1))
    runs = values.copy()  # runs 3, 4, ... were differences to the run two places before
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def to_compressed(segmentation, height: int, width: int) -> dict:
    """A COCO segmentation of a height x width image (polygons or an RLE), checked, as an RLE with a compressed
    string (JSON-safe)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        _check_polygons(segmentation, height, width)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        size = rle_counts(segmentation)[:2]
        if size != (height, width):
            raise PromptError(f"the RLE's size {size[0]}x{size[1]} is not the image's {height}x{width}")
        counts = segmentation["counts"]
        rle = mask_utils.frPyObjects(segmentation, height, width) if isinstance(counts, list) else segmentation
    counts = rle["counts"]
    return {"size": [height, width], "counts": counts.decode() if isinstance(counts, bytes) else counts}


def _check_polygons(polygons: list, height: int, width: int) -> None:
    """Polygons as COCO writes them: flat x, y lists of at least three points, finite and no further than one
    image size outside the image (pycocotools rasterises every pixel of an edge, so far points cost memory)."""
    _size([height, width])
    if not polygons:
        raise PromptError("a polygon segmentation needs at least one polygon")
    for polygon in polygons:
        if not isinstance(polygon, list) or not all(isinstance(v, Real) and not isinstance(v, bool) for v in polygon):
            raise PromptError("a polygon must be a flat list of numbers x0, y0, x1, y1, ...")
        if len(polygon) < 6 or len(polygon) % 2:
            raise PromptError(f"a polygon needs an even count of at least 6 numbers (3 points), got {len(polygon)}")
        for x, y in zip(polygon[::2], polygon[1::2]):
            if not (math.isfinite(x) and math.isfinite(y) and -width <= x <= 2 * width and -height <= y <= 2 * height):
                raise PromptError(f"polygon point ({x}, {y}) is not finite or lies far outside the "
                                  f"{width}x{height} image")
