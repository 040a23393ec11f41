"""Concept prompts: SAM 3 finds every instance of a noun phrase ("person", "red car") in an image.

SAM 3 gives masks but no words; `PAM.find` turns each instance into a box prompt, which PAM describes as it
describes any box. This module is SAM 3's one home: loading it (transformers' `Sam3Model` and `Sam3Processor`,
transformers 5.0 or newer, no remote code) from a folder or a Hub id, and `ConceptFinder.find`, which encodes
the image once and runs SAM 3's text-conditioned detector and mask head per concept on those features.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .checkpoint import DEFAULT_SAM3, resolve_sam3_dir
from .errors import CheckpointError, DependencyError, PromptError, SettingsError
from .io import ImageLike, load_image
from .prompts import Box, Region

# SAM 3's own defaults for instance segmentation (transformers' examples, ComfyUI's SAM3 Detect).
DEFAULT_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5
# Instances described per concept: PAM's text is the slow part (as describe-everything's max_regions).
DEFAULT_MAX_INSTANCES = 16
SAM3_TRANSFORMERS = "5.0"  # the first transformers release with Sam3Model (4.57.x has none)

Concepts = Union[str, Sequence[str]]
Sam3Like = Union[str, os.PathLike, "ConceptFinder", None]


@dataclass
class ConceptInstance:
    """One instance SAM 3 found: which concept, where (xyxy pixels, clipped to the image), how sure it is
    (its detection score times the concept's presence score) and SAM 3's own mask (bool HxW)."""

    concept: str
    box: Box
    score: float
    mask: np.ndarray = field(repr=False)

    def region(self, width: int, height: int) -> Region:
        """The box prompt PAM describes this instance by, checked against a width x height image."""
        return Region.from_box(self.box).validated(width, height)


def checked_concepts(concepts: Concepts) -> list[str]:
    """The concepts as stripped noun phrases, duplicates dropped; an empty or non-text concept is an error."""
    items = [concepts] if isinstance(concepts, str) else list(concepts) if concepts is not None else []
    if not items:
        raise PromptError("give at least one concept to find (a noun phrase such as 'person' or 'red car')")
    names = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, str):
            raise PromptError(f"concept {number} must be text (a noun phrase), got {type(item).__name__}")
        if not item.strip():
            raise PromptError(f"concept {number} is empty: give a noun phrase such as 'person' or 'red car'")
        names.append(" ".join(item.split()))
    return list(dict.fromkeys(names))


def check_find_settings(threshold: float, max_instances: Optional[int]) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise SettingsError(f"the concept threshold must be between 0 and 1, got {threshold}")
    if max_instances is not None and max_instances < 1:
        raise SettingsError(f"max_instances must be >= 1 (or None for no limit), got {max_instances}")


def _sam3_classes():
    try:
        from transformers import Sam3Model, Sam3Processor
    except ImportError:
        import transformers

        raise DependencyError(f"concept prompts need SAM 3 from transformers {SAM3_TRANSFORMERS} or newer "
                              f"(Sam3Model); this environment has transformers {transformers.__version__}: "
                              f"pip install -U 'transformers>={SAM3_TRANSFORMERS}'") from None
    return Sam3Model, Sam3Processor


class ConceptFinder:
    """SAM 3 on one device, finding the instances of text concepts in images.

    >>> finder = ConceptFinder.from_pretrained("facebook/sam3")
    >>> [(i.concept, i.box, i.score) for i in finder.find("photo.jpg", ["person", "dog"])]
    """

    def __init__(self, model, processor, name: str = ""):
        self.model = model.eval()
        self.processor = processor
        self.name = name  # the Hub id or the folder's name

    @classmethod
    def from_pretrained(cls, sam3: Union[str, os.PathLike] = DEFAULT_SAM3, device: Union[str, torch.device] = "cpu",
                        local_files_only: Optional[bool] = None) -> "ConceptFinder":
        """SAM 3 from a transformers-format folder or a Hub id (downloads only when allowed; see
        `checkpoint.resolve_sam3_dir`), in float32 on `device`."""
        from .model import _quiet_transformers

        model_class, processor_class = _sam3_classes()
        folder = resolve_sam3_dir(sam3, local_files_only)
        try:
            with _quiet_transformers():
                model = model_class.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
                processor = processor_class.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load SAM 3 from {folder}: {exc}") from exc
        name = Path(sam3).expanduser().resolve().name if Path(sam3).expanduser().exists() else str(sam3)
        return cls(model, processor, name).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: Union[str, torch.device]) -> "ConceptFinder":
        self.model.to(device)
        return self

    def _check_lengths(self, names: list[str]) -> None:
        """SAM 3 reads at most 32 tokens of text (its CLIP encoder's positions); a longer concept is an error,
        not a silently cut one."""
        limit = self.model.config.text_config.max_position_embeddings
        for name in names:
            count = len(self.processor.tokenizer(name).input_ids)
            if count > limit:
                raise PromptError(f"concept {name[:60]!r} is {count} tokens long; SAM 3 reads at most {limit} "
                                  f"(a short noun phrase works best)")

    @torch.inference_mode()
    def find(self, image: ImageLike, concepts: Concepts, threshold: float = DEFAULT_THRESHOLD,
             max_instances: Optional[int] = DEFAULT_MAX_INSTANCES) -> list[ConceptInstance]:
        """Every instance of each concept whose score is above `threshold`, at most `max_instances` per
        concept (None: all), concept by concept in the given order, surest first. The image is encoded once
        (SAM 3's vision features are passed to the detector for each concept); no instance is an empty list."""
        names = checked_concepts(concepts)
        check_find_settings(threshold, max_instances)
        self._check_lengths(names)
        pil = load_image(image)
        device = self.device
        pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"].to(device)
        vision = self.model.get_vision_features(pixel_values=pixels)
        found = []
        for name in names:
            text = self.processor(text=name, return_tensors="pt")
            outputs = self.model(vision_embeds=vision, input_ids=text["input_ids"].to(device),
                                 attention_mask=text["attention_mask"].to(device))
            found += self._instances(name, outputs, threshold, max_instances, pil.width, pil.height)
        return found

    def _instances(self, name: str, outputs, threshold: float, max_instances: Optional[int], width: int,
                   height: int) -> list[ConceptInstance]:
        """The kept queries, surest first, through the processor's own post-processing (box scaling, mask
        resizing and binarising), which then only resizes the masks that are kept."""
        scores = outputs.pred_logits.sigmoid()
        if outputs.presence_logits is not None:
            scores = scores * outputs.presence_logits.sigmoid()
        order = scores[0].sort(descending=True, stable=True).indices
        keep = order[scores[0, order] > threshold][:max_instances]
        kept = type(outputs)(pred_logits=outputs.pred_logits[:, keep], pred_boxes=outputs.pred_boxes[:, keep],
                             pred_masks=outputs.pred_masks[:, keep], presence_logits=outputs.presence_logits)
        [result] = self.processor.post_process_instance_segmentation(
            kept, threshold=threshold, mask_threshold=MASK_THRESHOLD, target_sizes=[(height, width)])
        instances = []
        for score, box, mask in zip(result["scores"].tolist(), result["boxes"].tolist(), result["masks"].cpu()):
            x0, y0, x1, y1 = max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3])
            if x1 > x0 and y1 > y0:  # a box that lies outside the image once clipped prompts nothing
                instances.append(ConceptInstance(name, (x0, y0, x1, y1), float(score), mask.numpy().astype(bool)))
        return instances


class _FinderCache:
    """The last SAM 3 loaded, by source (it is 3.4 GB in float32): hosts and engines ask for it per run."""

    def __init__(self):
        self._key: Optional[str] = None
        self._finder: Optional[ConceptFinder] = None
        self._lock = threading.Lock()

    def get(self, sam3: Union[str, os.PathLike], local_files_only: Optional[bool]) -> ConceptFinder:
        key = str(sam3)
        with self._lock:
            if self._key != key:
                self._key, self._finder = None, None  # drop the old one before loading the next
                self._finder, self._key = ConceptFinder.from_pretrained(sam3, local_files_only=local_files_only), key
            return self._finder

    def clear(self) -> None:
        with self._lock:
            self._key, self._finder = None, None


FINDERS = _FinderCache()


def concept_finder(sam3: Sam3Like = None, local_files_only: Optional[bool] = None) -> ConceptFinder:
    """`sam3` as a ConceptFinder: itself when it is one, else the SAM 3 of that folder or Hub id (None:
    facebook/sam3), loaded on first use and kept for the next call. `local_files_only`: never download (None:
    only when HF_HUB_OFFLINE=1 is set)."""
    if isinstance(sam3, ConceptFinder):
        return sam3
    return FINDERS.get(sam3 if sam3 is not None else DEFAULT_SAM3, local_files_only)
