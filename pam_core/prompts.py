"""Region prompts (box, points, mask), their validation against an image, and SAM 2's input encoding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .errors import PromptError

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Region:
    """One region prompt in original-image pixels.

    `box` is xyxy. `points` go with `labels` (1 = positive, 0 = negative). A box and points may be
    combined (SAM 2 takes the box as its first two points). `mask` is a boolean HxW array at image
    size and stands alone: it goes through SAM 2's mask-input path (see docs/python-api.md, "Mask prompts").
    """

    box: Optional[Box] = None
    points: Optional[tuple[tuple[float, float], ...]] = None
    labels: Optional[tuple[int, ...]] = None
    mask: Optional[np.ndarray] = field(default=None, compare=False, repr=False)

    @classmethod
    def from_box(cls, box: Sequence[float]) -> "Region":
        return cls(box=_as_box(box))

    @classmethod
    def from_points(cls, points: Sequence[Sequence[float]], labels: Optional[Sequence[int]] = None) -> "Region":
        pts = _numbers(points, "points")
        if pts.ndim == 0 or pts.size != 2 * len(pts):
            raise PromptError(f"points must be a list of x,y pairs, got {_shown(points)}")
        if not np.isfinite(pts).all():
            raise PromptError(f"points have non-finite values: {pts.reshape(-1, 2).tolist()}")
        labs = _numbers(labels, "point labels").reshape(-1) if labels is not None else np.ones(len(pts))
        if not np.isin(labs, (0, 1)).all():
            raise PromptError(f"point labels must be 1 (positive) or 0 (negative), got {labs.tolist()}")
        return cls(points=tuple(map(tuple, pts.reshape(-1, 2).tolist())), labels=tuple(int(v) for v in labs))

    @classmethod
    def from_mask(cls, mask) -> "Region":
        from .io import load_mask

        return cls(mask=load_mask(mask))

    @property
    def kind(self) -> str:
        if self.mask is not None:
            return "mask"
        return "+".join(k for k, v in (("box", self.box), ("points", self.points)) if v is not None)

    def validated(self, width: int, height: int) -> "Region":
        """This region checked against a width x height image; a box overhanging an edge is clipped."""
        if self.mask is not None:
            if self.box is not None or self.points is not None:
                raise PromptError("a mask prompt cannot be combined with a box or points")
            return Region(mask=_checked_mask(self.mask, width, height))
        if self.box is None and not self.points:
            raise PromptError("a region needs a box, points or a mask")
        box = _clipped_box(self.box, width, height) if self.box is not None else None
        points, labels = None, None
        if self.points is not None:
            labels = self.labels if self.labels is not None else tuple(1 for _ in self.points)
            if len(labels) != len(self.points):
                raise PromptError(f"{len(self.points)} points but {len(labels)} labels")
            if any(v not in (0, 1) for v in labels):
                raise PromptError(f"point labels must be 1 (positive) or 0 (negative), got {list(labels)}")
            if box is None and 1 not in labels:
                raise PromptError("points without a box need at least one positive point (label 1)")
            for x, y in self.points:
                if not (0 <= x <= width and 0 <= y <= height):
                    raise PromptError(f"point ({x:g}, {y:g}) lies outside the {width}x{height} image")
            points = self.points
        return Region(box=box, points=points, labels=labels)

    def sam_point_inputs(self, width: int, height: int, image_size: int) -> dict[str, torch.Tensor]:
        """Points (box corners first, labels 2 and 3) scaled to SAM's square input, as SAM 2's video
        predictor's `add_new_points_or_box` computes them (float32 / int image size * image_size)."""
        coords = torch.zeros(0, 2, dtype=torch.float32)
        labels = torch.zeros(0, dtype=torch.int32)
        if self.points is not None:
            coords = torch.tensor(self.points, dtype=torch.float32)
            labels = torch.tensor(self.labels, dtype=torch.int32)
        if self.box is not None:
            coords = torch.cat([torch.tensor(self.box, dtype=torch.float32).reshape(2, 2), coords])
            labels = torch.cat([torch.tensor([2, 3], dtype=torch.int32), labels])
        coords = coords / torch.tensor([width, height]) * image_size
        return {"point_coords": coords[None], "point_labels": labels[None]}


RegionLike = Union[Region, dict]


def as_region(region: RegionLike) -> Region:
    """A Region from a Region or a dict with "box", "points" (+ "labels") and/or "mask"."""
    if isinstance(region, Region):
        return region
    if not isinstance(region, dict):
        raise PromptError(f"a region must be a Region or a dict, got {type(region).__name__}")
    unknown = set(region) - {"box", "points", "labels", "mask"}
    if unknown:
        raise PromptError(f"unknown region keys {sorted(unknown)}; use box, points, labels, mask")
    given = lambda key: region.get(key) is not None  # noqa: E731
    points = Region.from_points(region["points"], region.get("labels")) if given("points") else Region()
    return Region(box=_as_box(region["box"]) if given("box") else None, points=points.points, labels=points.labels,
                  mask=Region.from_mask(region["mask"]).mask if given("mask") else None)


def _as_box(box: Sequence[float]) -> Box:
    values = _numbers(box, "a box").reshape(-1).tolist()
    if len(values) != 4:
        raise PromptError(f"a box needs 4 numbers x0,y0,x1,y1, got {len(values)}")
    if not all(np.isfinite(values)):
        raise PromptError(f"box has non-finite values: {values}")
    return tuple(values)  # type: ignore[return-value]


def _numbers(value, what: str) -> np.ndarray:
    """`value` (nested lists of numbers, an array) as float64, or a PromptError saying what it should be."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise PromptError(f"{what} must be numbers (nested lists of equal length), got {_shown(value)}") from None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _clipped_box(box: Box, width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise PromptError(f"box {list(box)} is inverted or empty: need x0 < x1 and y0 < y1 (xyxy pixels)")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise PromptError(f"box {list(box)} lies entirely outside the {width}x{height} image")
    return (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))


def _checked_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != (height, width):
        raise PromptError(f"mask has shape {mask.shape} but the image is {height}x{width} (HxW)")
    mask = mask.astype(bool)
    if not mask.any():
        raise PromptError("mask is empty: it has no pixel inside the region")
    return mask


def mask_box(mask: np.ndarray) -> Optional[Box]:
    """The tight xyxy box (pixel edges) around a boolean mask, None when the mask is empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
