"""PAM_REGIONS: what the describe nodes found, per image (or video frame), for the text / JSON and overlay nodes
downstream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pam_core import RegionResult
from pam_core.video import VideoResult


@dataclass
class PAMRegions:
    """The regions of every image of a batch: `per_image[i]` lists pam_core RegionResults (mask, box,
    mask_score, object_score, text, texts/fields) of image i, whose size is `sizes[i]` (height, width)."""

    per_image: list[list[RegionResult]]
    sizes: list[tuple[int, int]]

    @classmethod
    def from_video(cls, result: VideoResult, prompts: list[str], task: str, lang: str) -> "PAMRegions":
        """A video's tracks as regions per frame: every object tracked on the frame (`prompts[object]` is its
        prompt kind), with the caption of that object for the segment holding the frame; "" (under `task`)
        where it has none (frames outside every segment, tracked with memory carry)."""
        texts = {}
        for caption in result.captions:
            segment = next(s for s in result.segments if caption.start_frame in s)
            texts[caption.object, segment] = {caption.task: caption.text}
        per_frame: list[list[RegionResult]] = [[] for _ in range(result.info.num_frames)]
        for tracked in result.frames:
            segment = next((s for s in result.segments if tracked.frame in s), None)
            per_frame[tracked.frame].append(RegionResult(
                index=tracked.object, prompt=prompts[tracked.object], mask=tracked.mask, box=tracked.box,
                mask_score=tracked.mask_score, object_score=tracked.object_score, lang=lang,
                texts=texts.get((tracked.object, segment), {task: ""})))
        return cls(per_frame, [(result.info.height, result.info.width)] * result.info.num_frames)

    def flat(self) -> list[tuple[int, RegionResult]]:
        return [(image, r) for image, results in enumerate(self.per_image) for r in results]

    def masks(self) -> torch.Tensor:
        """All masks as a ComfyUI MASK batch [N, H, W] (float 0/1), image by image."""
        flat = [r.mask for _, r in self.flat()]
        if not flat:
            height, width = self.sizes[0] if self.sizes else (64, 64)
            return torch.zeros(0, height, width)
        return torch.from_numpy(np.stack(flat)).float()

    def union_masks(self) -> torch.Tensor:
        """One mask per image [B, H, W]: the union of its regions' masks (empty for an image without any)."""
        height, width = self.sizes[0]
        union = torch.zeros(len(self.per_image), height, width)
        for image, result in self.flat():
            union[image] = torch.maximum(union[image], torch.from_numpy(result.mask).float())
        return union

    def lines(self) -> list[str]:
        """One line per region (line breaks inside a text become spaces); with several tasks per region
        "task: text | task: text"; a region found for a concept starts with "concept: "."""
        def line(result: RegionResult) -> str:
            texts = {task: " ".join(text.split()) for task, text in result.texts.items()}
            text = next(iter(texts.values())) if len(texts) == 1 else " | ".join(f"{t}: {x}" for t, x in texts.items())
            return f"{result.concept}: {text}" if result.concept is not None else text
        return [line(r) for _, r in self.flat()]

    def to_json(self) -> list[dict]:
        return [{"image": image, **r.to_dict()} for image, r in self.flat()]
