"""Prompt inputs of the PAM nodes (editor JSON, KJNodes point strings, BBOX lists, MASK batches) as pam_core Regions.

Pure translation with no ComfyUI imports, so it is testable on its own. Coordinates are image pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from pam_core import PromptError, Region

Point = tuple[float, float]


@dataclass
class Prompts:
    """Everything that was clicked or connected: points (one region, or one per positive point) and boxes."""

    positive: list[Point] = field(default_factory=list)
    negative: list[Point] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)

    def __add__(self, other: "Prompts") -> "Prompts":
        return Prompts(self.positive + other.positive, self.negative + other.negative, self.boxes + other.boxes)

    def regions(self, each_point_is_a_region: bool = False) -> list[Region]:
        """One region per box, then the points: all together as one region, or each positive point as its
        own region (the negative points go with every one of them)."""
        regions = [Region.from_box(box) for box in self.boxes]
        if each_point_is_a_region and self.positive:
            regions += [Region.from_points([p, *self.negative], [1] + [0] * len(self.negative)) for p in self.positive]
        elif self.positive or self.negative:
            regions.append(Region.from_points(self.positive + self.negative,
                                              [1] * len(self.positive) + [0] * len(self.negative)))
        return regions


def _load_json(text: str, what: str):
    text = (text or "").strip()
    if not text:
        return []
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptError(f"{what} is not valid JSON ({exc.msg} at character {exc.pos}): {text[:80]!r}") from exc


def _point(value, what: str) -> Point:
    if isinstance(value, dict) and "x" in value and "y" in value:
        value = (value["x"], value["y"])
    try:
        x, y = (float(v) for v in value)
    except (TypeError, ValueError):
        raise PromptError(f"{what}: a point must be {{\"x\": X, \"y\": Y}} or [X, Y], got {value!r}") from None
    if not (np.isfinite(x) and np.isfinite(y)):
        raise PromptError(f"{what}: point {value!r} is not finite")
    return x, y


def parse_points(text: str, what: str = "points") -> list[Point]:
    """A KJNodes Points Editor coordinate string, `[{"x": 10, "y": 20}, ...]` (or `[[10, 20], ...]`)."""
    data = _load_json(text, what)
    if not isinstance(data, list):
        raise PromptError(f"{what} must be a JSON list of points like [{{\"x\": 10, \"y\": 20}}], got {text[:80]!r}")
    return [_point(p, what) for p in data]


def parse_boxes(bboxes) -> list[tuple[float, float, float, float]]:
    """A BBOX input (KJNodes / Florence-2 style): one xyxy box, a list of them, or a list per image."""
    if bboxes is None:
        return []
    array = np.asarray(bboxes, dtype=np.float64) if not isinstance(bboxes, torch.Tensor) else bboxes.double().numpy()
    if array.size == 0:
        return []
    if array.shape[-1] != 4:
        raise PromptError(f"bboxes must hold [x0, y0, x1, y1] boxes, got an array of shape {array.shape}")
    return [tuple(float(v) for v in box) for box in array.reshape(-1, 4)]


def parse_editor(text: str) -> Prompts:
    """The editor widget's value: `{"positive": [...], "negative": [...], "boxes": [[x0, y0, x1, y1], ...]}`.
    A plain KJNodes point list is accepted too (positive points)."""
    data = _load_json(text, "prompt")
    if isinstance(data, list):
        return Prompts(positive=[_point(p, "prompt") for p in data])
    if not isinstance(data, dict):
        raise PromptError(f"prompt must be a JSON object with positive / negative / boxes, got {text[:80]!r}")
    unknown = set(data) - {"positive", "negative", "boxes"}
    if unknown:
        raise PromptError(f"prompt has unknown keys {sorted(unknown)}; use positive, negative, boxes")
    return Prompts(positive=[_point(p, "prompt positive") for p in data.get("positive") or []],
                   negative=[_point(p, "prompt negative") for p in data.get("negative") or []],
                   boxes=parse_boxes(data.get("boxes") or []))


def parse_concepts(text: str) -> list[str]:
    """The concepts text box: one noun phrase per line or comma-separated ("person, red car"); blanks skipped
    (pam_core checks what is left)."""
    return [part.strip() for line in (text or "").splitlines() for part in line.split(",") if part.strip()]


def mask_regions(masks: torch.Tensor, height: int, width: int) -> list[Region]:
    """A MASK batch ([B, H, W] or [H, W], 0..1) as one mask Region each, at the image's size (nearest resize
    when the mask comes at another resolution); pam_core reads and checks the masks."""
    masks = masks if masks.ndim == 3 else masks.reshape(-1, *masks.shape[-2:])
    if masks.shape[-2:] != (height, width):
        masks = torch.nn.functional.interpolate(masks[:, None].float(), size=(height, width),
                                                mode="nearest-exact")[:, 0]
    return [Region.from_mask(mask) for mask in masks]
