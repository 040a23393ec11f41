"""PAM_REGIONS: what the describe nodes found, per image, for the text / JSON and overlay nodes downstream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pam_core import RegionResult


@dataclass
class PAMRegions:
    """The regions of every image of a batch: `per_image[i]` lists pam_core RegionResults (mask, box,
    mask_score, object_score, text, texts/fields) of image i, whose size is `sizes[i]` (height, width)."""

    per_image: list[list[RegionResult]]
    sizes: list[tuple[int, int]]

    def flat(self) -> list[tuple[int, RegionResult]]:
        return [(image, r) for image, results in enumerate(self.per_image) for r in results]

    def masks(self) -> torch.Tensor:
        """All masks as a ComfyUI MASK batch [N, H, W] (float 0/1), image by image."""
        flat = [r.mask for _, r in self.flat()]
        if not flat:
            height, width = self.sizes[0] if self.sizes else (64, 64)
            return torch.zeros(0, height, width)
        return torch.from_numpy(np.stack(flat)).float()

    def lines(self) -> list[str]:
        """One line per region (line breaks inside a text become spaces); with several tasks per region
        "task: text | task: text"."""
        def line(result: RegionResult) -> str:
            texts = {task: " ".join(text.split()) for task, text in result.texts.items()}
            return next(iter(texts.values())) if len(texts) == 1 else " | ".join(f"{t}: {x}" for t, x in texts.items())
        return [line(r) for _, r in self.flat()]

    def to_json(self) -> list[dict]:
        return [{"image": image, **r.to_dict()} for image, r in self.flat()]
