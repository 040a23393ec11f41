"""The public entry point: load PAM once, then ask for masks and text of image regions."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from . import checkpoint
from .automask import AutoMaskSettings, find_objects
from .errors import SettingsError
from .generation import DecodingSpec, Generation, GenerationSettings, decode
from .io import ImageLike, load_image
from .model import PAMModel
from .progress import Progress
from .prompts import Box, Region, RegionLike, as_region, mask_box
from .segmenter import ImageFeatures, Segmentation
from .tasks import Task, Tasks, parse_output, resolve_tasks

if TYPE_CHECKING:  # annotations only: the video package does not import the engine
    from .video import VideoResult, VideoSettings

# Regions whose SAM 2 decoder passes run together (the decoder is cheap; this bounds its activations).
DECODER_CHUNK = 32
# (region, task) sequences decoded together on the CPU; on a GPU the default follows free memory.
CPU_MAX_BATCH = 16
GPU_MAX_BATCH = 64


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
        }


@dataclass
class RegionAnalysis:
    """The intermediate values of one region, before text generation (used by parity checks)."""

    region: Region
    segmentation: Segmentation
    mask_logits: torch.Tensor  # (1, 1, H, W)
    visual_embeds: torch.Tensor  # (1042, hidden)
    sem_tokens: torch.Tensor  # (16, 256) Perceiver output before projection


class FeatureCache:
    """SAM 2 encoder outputs of the last few images, keyed by pixel content (a re-run graph, interactive
    clicking or another task on the same image skips the encoder). Bounded: the oldest entry goes first."""

    def __init__(self, size: int = 4):
        if size < 0:
            raise SettingsError(f"the feature cache size must be >= 0, got {size}")
        self.size = size
        self._entries: OrderedDict[str, ImageFeatures] = OrderedDict()

    @staticmethod
    def key(image: Image.Image) -> str:
        digest = hashlib.blake2b(image.tobytes(), digest_size=20)
        digest.update(f"{image.mode}{image.size}".encode())
        return digest.hexdigest()

    def get(self, key: str) -> Optional[ImageFeatures]:
        features = self._entries.get(key)
        if features is not None:
            self._entries.move_to_end(key)
        return features

    def put(self, key: str, features: ImageFeatures) -> None:
        if self.size == 0:
            return
        self._entries[key] = features
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class PAM:
    """Perceive Anything: masks and text for image regions.

    >>> pam = PAM.from_pretrained("Perceive-Anything/PAM-1.5B")
    >>> [r] = pam.describe("photo.jpg", [Region.from_box([70, 110, 270, 340])], task=["category", "detailed"])
    >>> r.texts["category"], r.texts["detailed"], r.mask.shape

    One SAM 2 encoder pass per image (cached for `cache_size` images), every prompt of an image through the
    decoder and Perceiver as one batch, and up to `max_batch` (region, task) sequences decoded together
    (None: 16 on the CPU, from free memory on a GPU).
    """

    def __init__(self, model: PAMModel, cache_size: int = 4, max_batch: Optional[int] = None):
        if max_batch is not None and max_batch < 1:
            raise SettingsError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.cache = FeatureCache(cache_size)
        self.max_batch = max_batch

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = checkpoint.DEFAULT_MODEL, cache_size: int = 4,
                        max_batch: Optional[int] = None, **kwargs) -> "PAM":
        """See `PAMModel.from_pretrained` for `sam2`, `sam2_config`, `device`, `dtype`, `local_files_only`."""
        return cls(PAMModel.from_pretrained(model, **kwargs), cache_size=cache_size, max_batch=max_batch)

    def encode(self, image: ImageLike) -> tuple[Image.Image, ImageFeatures]:
        """Load the image and run SAM 2's image encoder, unless the cache has this image already."""
        pil = load_image(image)
        key = self.cache.key(pil)
        features = self.cache.get(key)
        if features is None:
            features = self.model.segmenter.encode(pil)
            self.cache.put(key, features)
        return pil, features

    @torch.inference_mode()
    def analyze(self, features: ImageFeatures, region: RegionLike) -> RegionAnalysis:
        """One region's intermediate values (mask logits, visual embeddings); see `analyze_many`."""
        return self.analyze_many(features, [region])[0]

    @torch.inference_mode()
    def analyze_many(self, features: ImageFeatures, regions: Sequence[RegionLike]) -> list[RegionAnalysis]:
        """Decoder and Perceiver for many regions of one image in batches. Prompts batch with others of the
        same shape (all masks; points with the same count, e.g. all boxes), since padding would change
        SAM 2's output."""
        checked = [as_region(r).validated(features.width, features.height) for r in regions]
        seg = self.model.segmenter
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
            visual, sem = self.model.image_visual_embeds(segs)
            analyses += [RegionAnalysis(region, s, s.mask_logits(features.height, features.width), v, t)
                         for region, s, v, t in zip(checked[start:start + DECODER_CHUNK], segs, visual, sem)]
        return analyses

    def generate(self, task: Task, visual_embeds: torch.Tensor, settings: GenerationSettings = GenerationSettings(),
                 return_first_logits: bool = False) -> Generation:
        """Text for one region: `visual_embeds` (V, H) as the <image> of `task`'s prompt."""
        return self.generate_many([task], visual_embeds[None], settings, return_first_logits)[0][0]

    def generate_many(self, tasks: Sequence[Task], visual_embeds: torch.Tensor,
                      settings: GenerationSettings = GenerationSettings(),
                      return_first_logits: bool = False) -> list[list[Generation]]:
        """Text for every region (visual_embeds (R, V, H)) and every task, decoded together: [region][task].
        Greedy results are the same as one call per region and task."""
        prefixes = self.model.prompt_prefix(visual_embeds, tasks[0])
        task_ids = [self.model.task_ids(task) for task in tasks]
        decoded = decode(self.model.llm, prefixes, task_ids, self._decoding_spec(settings), return_first_logits)
        tokenizer = self.model.tokenizer
        return [[Generation(ids, tokenizer.decode(ids, skip_special_tokens=True).strip(), first)
                 for ids, first in per_region] for per_region in decoded]

    def _decoding_spec(self, settings: GenerationSettings) -> DecodingSpec:
        defaults = self.model.generation_defaults
        eos = defaults.get("eos_token_id") or [self.model.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        eos = eos if isinstance(eos, list) else [eos]
        penalty = settings.repetition_penalty
        if penalty is None:
            penalty = float(defaults.get("repetition_penalty", 1.0))
        return DecodingSpec(settings, penalty, tuple(eos), defaults.get("pad_token_id", eos[0]))

    def describe(self, image: ImageLike, regions: Sequence[RegionLike], task: Tasks = "category",
                 lang: str = "en", generation: GenerationSettings = GenerationSettings(),
                 progress: Optional[Progress] = None) -> list[RegionResult]:
        """Mask and text(s) for every region of one image. `task` is one task or a list of them (e.g.
        ["category", "detailed"]): each region's visual prefix is computed once and shared by its tasks."""
        tasks = resolve_tasks(task, lang)
        _, features = self.encode(image)
        checked = [as_region(r).validated(features.width, features.height) for r in regions]
        return self._describe_regions(features, checked, [r.kind for r in checked], tasks, lang, generation, progress)

    def describe_everything(self, image: ImageLike, task: Tasks = "category", lang: str = "en",
                            generation: GenerationSettings = GenerationSettings(),
                            auto: AutoMaskSettings = AutoMaskSettings(),
                            progress: Optional[Progress] = None) -> list[RegionResult]:
        """Find the image's objects without a prompt (see `pam_core.automask`) and describe each, largest
        first (or surest first with `auto.order="score"`), at most `auto.max_regions`."""
        tasks = resolve_tasks(task, lang)
        _, features = self.encode(image)
        if progress:
            progress(0, 0, "finding objects")
        regions = self._find_regions(features, auto)
        return self._describe_regions(features, regions, ["auto"] * len(regions), tasks, lang, generation, progress)

    def find_regions(self, image: ImageLike, auto: AutoMaskSettings = AutoMaskSettings()) -> list[Region]:
        """The image's objects as box regions, found as `describe_everything` finds them but not described: e.g.
        the objects of a video's prompt frame, to track with `describe_video`."""
        _, features = self.encode(image)
        return self._find_regions(features, auto)

    def _find_regions(self, features: ImageFeatures, auto: AutoMaskSettings) -> list[Region]:
        return [Region.from_box(c.box).validated(features.width, features.height)
                for c in find_objects(self.model.segmenter, features, auto)]

    def _describe_regions(self, features: ImageFeatures, regions: list[Region], prompts: list[str],
                          tasks: list[Task], lang: str, generation: GenerationSettings,
                          progress: Optional[Progress]) -> list[RegionResult]:
        per_chunk = max(1, self._max_batch() // len(tasks))
        results: list[RegionResult] = []
        for start in range(0, len(regions), per_chunk):
            if progress:
                progress(start, len(regions), f"regions {start + 1}-{min(start + per_chunk, len(regions))} "
                                              f"of {len(regions)}")
            chunk = regions[start:start + per_chunk]
            analyses = self.analyze_many(features, chunk)
            generations = self.generate_many(tasks, torch.stack([a.visual_embeds for a in analyses]), generation)
            for offset, (analysis, per_task) in enumerate(zip(analyses, generations)):
                results.append(self._result(start + offset, prompts[start + offset], analysis, tasks, per_task, lang))
        if progress:
            progress(len(regions), len(regions), "done")
        return results

    def describe_video(self, video, prompts, settings: Optional["VideoSettings"] = None, *,
                       generation: GenerationSettings = GenerationSettings(), fps: Optional[float] = None,
                       progress: Optional[Progress] = None, on_frame=None, on_caption=None, keep_frames: bool = True,
                       history: Optional[str] = None, **options) -> "VideoResult":
        """Track objects through a video (file, frame folder or frame sequence) and caption each per segment.

        `prompts`: regions on the prompt frame, or `VideoPrompt(region, frame=K)` each. `settings` is a
        `VideoSettings` (prompt frame, task, lang, segments or window, carry, backward); keyword `options`
        override its fields, e.g. `describe_video("clip.mp4", [box], task="caption", window=32)`. `on_frame`
        receives each frame's `ObjectFrame`s and `on_caption` each `SegmentCaption` as soon as they exist.
        `history` is the caption that came before this clip (e.g. the previous event's, in PAM's streaming
        protocol): each object's first segment is conditioned on it instead of "None"; later segments are
        conditioned on the object's own previous caption. Only the "caption" task takes a history.
        Returns a `VideoResult`; see `pam_core.video` for the tracking rules.
        """
        from .video import VideoSettings, describe_video

        settings = (settings or VideoSettings()).replace(**options)
        return describe_video(self.model, self.generate, video, prompts, settings, generation=generation, fps=fps,
                              progress=progress, on_frame=on_frame, on_caption=on_caption, keep_frames=keep_frames,
                              history=history)

    @staticmethod
    def _result(index: int, prompt: str, analysis: RegionAnalysis, tasks: list[Task], generations: list[Generation],
                lang: str) -> RegionResult:
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

    def _max_batch(self) -> int:
        if self.max_batch is not None:
            return self.max_batch
        device = self.model.device
        if device.type != "cuda":
            return CPU_MAX_BATCH
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(1, min(GPU_MAX_BATCH, free // 2 // self._sequence_bytes())))

    def _sequence_bytes(self) -> int:
        """Rough GPU memory of one decoded sequence: its KV cache at 2048 positions plus prefill activations."""
        cfg = self.model.config.llm
        itemsize = torch.finfo(self.model.dtype).bits // 8
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2048 * itemsize
        activations = 1100 * (cfg.intermediate_size * 3 + cfg.hidden_size * 4) * itemsize
        return kv + activations
