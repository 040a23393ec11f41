"""What PAM computes per region: the decoder and Perceiver pass (`analyze_regions`) and the result that joins a
region's mask with its generated texts (`RegionResult`). The engine and the dataset stream both build on these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .generation import Generation
from .model import PAMModel
from .prompts import Box, Region, RegionLike, as_region, mask_box
from .segmenter import ImageFeatures, Segmentation
from .tasks import Task, parse_output

# Regions whose SAM 2 decoder passes run together (the decoder is cheap; this bounds its activations).
DECODER_CHUNK = 32


@dataclass
class RegionResult:
    """What PAM says about one region: its mask and one text per requested task."""

    index: int
    prompt: str  # box, points, box+points, mask, or auto (describe everything)
    mask: np.ndarray = field(repr=False)  # bool HxW at image resolution
    box: Optional[Box]  # tight box around the mask (xyxy pixels), None for an empty mask
    mask_score: float  # SAM 2's predicted IoU of the mask
    object_score: float  # SAM 2's object-presence logit (> 0: present)
    lang: str
    texts: dict[str, str]  # task name (the instruction for a free task) -> generated text, in request order
    fields: dict[str, str] = field(default_factory=dict)  # parsed label / definition where the tasks have them
    token_ids: dict[str, list[int]] = field(default_factory=dict, repr=False)
    # Set by `PAM.find` (concept prompts through SAM 3): the concept, SAM 3's score and SAM 3's own mask.
    concept: Optional[str] = None
    concept_score: Optional[float] = None
    concept_mask: Optional[np.ndarray] = field(default=None, repr=False)

    def found_as(self, instance) -> None:
        """This region is SAM 3's `instance` (a `ConceptInstance`): record its concept, score and mask."""
        self.concept, self.concept_score, self.concept_mask = instance.concept, instance.score, instance.mask

    @property
    def task(self) -> str:
        """The first requested task."""
        return next(iter(self.texts))

    @property
    def text(self) -> str:
        """The first requested task's text."""
        return self.texts[self.task]

    def to_dict(self) -> dict:
        """JSON-ready summary (the mask is stored separately, e.g. as a PNG)."""
        return {
            "index": self.index, "prompt": self.prompt, "box": list(self.box) if self.box else None,
            "mask_area": int(self.mask.sum()), "mask_score": self.mask_score, "object_score": self.object_score,
            "task": self.task, "lang": self.lang, "text": self.text, "texts": dict(self.texts), **self.fields,
            **({"concept": self.concept, "concept_score": self.concept_score} if self.concept is not None else {}),
        }


@dataclass
class RegionAnalysis:
    """The intermediate values of one region, before text generation (used by parity checks)."""

    region: Region
    segmentation: Segmentation
    mask_logits: torch.Tensor  # (1, 1, H, W)
    visual_embeds: torch.Tensor  # (1042, hidden)
    sem_tokens: torch.Tensor  # (16, 256) Perceiver output before projection


@torch.inference_mode()
def analyze_regions(model: PAMModel, features: ImageFeatures, regions: Sequence[RegionLike]) -> list[RegionAnalysis]:
    """Decoder and Perceiver for many regions of one image in batches. Prompts batch with others of the
    same shape (all masks; points with the same count, e.g. all boxes), since padding would change
    SAM 2's output."""
    checked = [as_region(r).validated(features.width, features.height) for r in regions]
    seg = model.segmenter
    groups: dict[object, list[int]] = {}
    for i, region in enumerate(checked):
        shape = "mask" if region.mask is not None else (region.box is not None, len(region.points or ()))
        groups.setdefault(shape, []).append(i)
    segmentations: list[Optional[Segmentation]] = [None] * len(checked)
    for shape, members in groups.items():
        for start in range(0, len(members), DECODER_CHUNK):
            chunk = members[start:start + DECODER_CHUNK]
            if shape == "mask":
                out = seg.segment(features, masks=[checked[i].mask for i in chunk])
            else:
                inputs = [checked[i].sam_point_inputs(features.width, features.height, seg.image_size)
                          for i in chunk]
                out = seg.segment(features, {k: torch.cat([p[k] for p in inputs]) for k in inputs[0]})
            for i, s in zip(chunk, out):
                segmentations[i] = s
    analyses = []
    for start in range(0, len(checked), DECODER_CHUNK):
        segs = segmentations[start:start + DECODER_CHUNK]
        visual, sem = model.image_visual_embeds(segs)
        analyses += [RegionAnalysis(region, s, s.mask_logits(features.height, features.width), v, t)
                     for region, s, v, t in zip(checked[start:start + DECODER_CHUNK], segs, visual, sem)]
    return analyses


def region_result(index: int, prompt: str, analysis: RegionAnalysis, tasks: Sequence[Task],
                  generations: Sequence[Generation], lang: str) -> RegionResult:
    """A region's mask (the prompt mask itself for mask prompts) with its texts and the fields they parse to."""
    region = analysis.region
    mask = region.mask if region.mask is not None else (analysis.mask_logits[0, 0] > 0).cpu().numpy()
    fields: dict[str, str] = {}
    for task, gen in zip(tasks, generations):
        fields.update({k: v for k, v in parse_output(task, gen.text).items() if v or k not in fields})
    return RegionResult(
        index=index, prompt=prompt, mask=mask, box=mask_box(mask),
        mask_score=analysis.segmentation.mask_score, object_score=analysis.segmentation.object_score,
        lang=lang, texts={t.key: g.text for t, g in zip(tasks, generations)}, fields=fields,
        token_ids={t.key: g.token_ids for t, g in zip(tasks, generations)})
