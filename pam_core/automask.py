"""Describe everything: find the objects of an image with SAM 2's automatic mask generation.

The same recipe as SAM 2's `SAM2AutomaticMaskGenerator` (a grid of single-point prompts, three candidate
masks each, predicted-IoU and stability thresholds, box NMS), run on the image features the engine has
already computed, so finding the regions costs decoder passes only. Each kept candidate becomes a box
prompt, PAM's main prompt type, so an automatic region is described exactly as the same box would be.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sam2.utils.amg import batched_mask_to_box, build_point_grid, calculate_stability_score
from torchvision.ops import batched_nms

from .errors import SettingsError
from .prompts import Box, Region
from .segmenter import ImageFeatures, SAM2Segmenter

ORDERS = ("area", "score")


@dataclass(frozen=True)
class AutoMaskSettings:
    """Thresholds default to SAM 2's automatic mask generator; `max_regions` caps the slow part (text)."""

    points_per_side: int = 16  # SAM 2 uses 32: 4x the decoder passes, minutes on a CPU
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_area: float = 0.001  # fraction of the image
    max_regions: int = 16
    order: str = "area"  # keep the largest regions, or the ones SAM 2 is surest of ("score")

    def __post_init__(self):
        if self.points_per_side < 1 or self.points_per_batch < 1 or self.max_regions < 1:
            raise SettingsError("points_per_side, points_per_batch and max_regions must be >= 1, got "
                                f"{self.points_per_side}, {self.points_per_batch}, {self.max_regions}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_area"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SettingsError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.order not in ORDERS:
            raise SettingsError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")


@dataclass(frozen=True)
class Candidate:
    box: Box  # xyxy in image pixels
    score: float  # SAM 2's predicted IoU
    stability: float
    area: float  # fraction of the image


@torch.inference_mode()
def find_objects(segmenter: SAM2Segmenter, features: ImageFeatures, settings: AutoMaskSettings) -> list[Candidate]:
    """The image's objects, best first (see `AutoMaskSettings.order`), at most `max_regions` of them."""
    grid = torch.from_numpy(build_point_grid(settings.points_per_side)).float() * segmenter.image_size
    boxes, scores, stabilities, areas = [], [], [], []
    for start in range(0, len(grid), settings.points_per_batch):
        logits, ious = segmenter.candidate_masks(features, grid[start:start + settings.points_per_batch])
        logits, ious = logits.flatten(0, 1), ious.flatten()
        stability = calculate_stability_score(logits, 0.0, settings.stability_score_offset)
        masks = logits > 0
        area = masks.flatten(1).float().mean(dim=1)
        keep = (ious > settings.pred_iou_thresh) & (stability >= settings.stability_score_thresh) & \
               (area >= max(settings.min_area, 1e-9))
        boxes.append(batched_mask_to_box(masks[keep]).float())
        scores.append(ious[keep])
        stabilities.append(stability[keep])
        areas.append(area[keep])
    boxes, scores, stabilities, areas = (torch.cat(x) for x in (boxes, scores, stabilities, areas))
    keep = batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.long), settings.box_nms_thresh)
    ranking = areas[keep] if settings.order == "area" else scores[keep]
    keep = keep[torch.argsort(ranking, descending=True, stable=True)][:settings.max_regions]
    side = logits.shape[-1]
    scale = torch.tensor([features.width, features.height] * 2, dtype=torch.float32) / side
    # batched_mask_to_box gives inclusive pixel indices; the box covers those pixels.
    pixel_boxes = (boxes[keep].cpu() + torch.tensor([0.0, 0.0, 1.0, 1.0])) * scale
    return [Candidate(tuple(float(v) for v in box), float(s), float(st), float(a))
            for box, s, st, a in zip(pixel_boxes.tolist(), scores[keep], stabilities[keep], areas[keep])]


def object_regions(segmenter: SAM2Segmenter, features: ImageFeatures, settings: AutoMaskSettings) -> list[Region]:
    """The image's objects (`find_objects`) as the box regions they are described as."""
    return [Region.from_box(c.box).validated(features.width, features.height)
            for c in find_objects(segmenter, features, settings)]
