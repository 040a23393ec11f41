"""The public entry point: load PAM once, then ask for masks and text of image regions."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from transformers import GenerationConfig

from . import checkpoint
from .errors import SettingsError
from .io import ImageLike, load_image
from .model import PAMModel
from .prompts import Box, Region, RegionLike, as_region, mask_box
from .segmenter import ImageFeatures, Segmentation
from .tasks import Task, parse_output, resolve_task

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class GenerationSettings:
    """How text is decoded. Greedy by default, so the same input always gives the same text.

    `repetition_penalty=None` applies the checkpoint's `generation_config.json` value (1.05 in the
    released PAM checkpoints, which the official notebooks apply silently); pass 1.0 for pure argmax.
    Sampling (`do_sample=True`) uses `temperature`/`top_p`/`top_k` and is reproducible with `seed`.
    """

    max_new_tokens: int = 512
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 0.1
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    seed: Optional[int] = None

    def __post_init__(self):
        if self.max_new_tokens < 1 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise SettingsError(f"need 1 <= max_new_tokens and 0 <= min_new_tokens <= max_new_tokens, got "
                                f"{self.max_new_tokens} and {self.min_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise SettingsError(f"sampling needs a temperature > 0, got {self.temperature}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise SettingsError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclass
class RegionResult:
    """What PAM says about one region."""

    index: int
    prompt: str  # box, points, box+points or mask
    mask: np.ndarray = field(repr=False)  # bool HxW at image resolution
    box: Optional[Box]  # tight box around the mask (xyxy pixels), None for an empty mask
    mask_score: float  # SAM 2's predicted IoU of the mask
    object_score: float  # SAM 2's object-presence logit (> 0: present)
    task: str
    lang: str
    text: str
    fields: dict[str, str] = field(default_factory=dict)  # parsed label / definition where the task has them
    token_ids: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready summary (the mask is stored separately, e.g. as a PNG)."""
        return {
            "index": self.index, "prompt": self.prompt, "box": list(self.box) if self.box else None,
            "mask_area": int(self.mask.sum()), "mask_score": self.mask_score, "object_score": self.object_score,
            "task": self.task, "lang": self.lang, "text": self.text, **self.fields,
        }


@dataclass
class RegionAnalysis:
    """The intermediate values of one region, before text generation (used by parity checks)."""

    region: Region
    segmentation: Segmentation
    mask_logits: torch.Tensor  # (1, 1, H, W)
    visual_embeds: torch.Tensor  # (1042, hidden)
    sem_tokens: torch.Tensor  # (16, 256) Perceiver output before projection


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    first_step_logits: Optional[torch.Tensor] = None


class PAM:
    """Perceive Anything: masks and text for image regions.

    >>> pam = PAM.from_pretrained("Perceive-Anything/PAM-1.5B")
    >>> [r] = pam.describe("photo.jpg", [Region.from_box([70, 110, 270, 340])], task="detailed")
    >>> r.text, r.mask.shape
    """

    def __init__(self, model: PAMModel):
        self.model = model

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = checkpoint.DEFAULT_MODEL, **kwargs) -> "PAM":
        """See `PAMModel.from_pretrained` for `sam2`, `sam2_config`, `device`, `dtype`, `local_files_only`."""
        return cls(PAMModel.from_pretrained(model, **kwargs))

    def encode(self, image: ImageLike) -> tuple[object, ImageFeatures]:
        """Load the image and run SAM 2's image encoder once (every region of the image reuses it)."""
        pil = load_image(image)
        return pil, self.model.segmenter.encode(pil)

    @torch.inference_mode()
    def analyze(self, features: ImageFeatures, region: RegionLike) -> RegionAnalysis:
        region = as_region(region).validated(features.width, features.height)
        seg = self.model.segmenter
        if region.mask is not None:
            segmentation = seg.segment(features, mask=region.mask)
        else:
            segmentation = seg.segment(features, region.sam_point_inputs(features.width, features.height,
                                                                         seg.image_size))
        visual, sem = self.model.image_visual_embeds(segmentation)
        logits = segmentation.mask_logits(features.height, features.width)
        return RegionAnalysis(region, segmentation, logits, visual, sem)

    @torch.inference_mode()
    def generate(self, task: Task, visual_embeds: torch.Tensor, settings: GenerationSettings = GenerationSettings(),
                 return_first_logits: bool = False) -> Generation:
        embeds, _ = self.model.prompt_embeds(task, visual_embeds)
        llm = self.model.llm
        config = self._generation_config(settings)
        with torch.random.fork_rng(devices=[self.model.device] if self.model.device.type == "cuda" else []):
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            config.output_logits = return_first_logits
            with warnings.catch_warnings():
                # Penalising only generated tokens is what the reference does (it also starts from embeddings).
                warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
                out = llm.generate(inputs_embeds=embeds[None], generation_config=config,
                                   attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long, device=embeds.device))
        ids = out.sequences[0].tolist()
        eos = set(config.eos_token_id)
        while ids and ids[-1] in eos:
            ids.pop()
        text = self.model.tokenizer.decode(ids, skip_special_tokens=True).strip()
        first = out.logits[0][0].float() if return_first_logits else None
        return Generation(ids, text, first)

    def _generation_config(self, settings: GenerationSettings) -> GenerationConfig:
        defaults = self.model.generation_defaults
        eos = defaults.get("eos_token_id") or [self.model.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        eos = eos if isinstance(eos, list) else [eos]
        penalty = settings.repetition_penalty
        if penalty is None:
            penalty = float(defaults.get("repetition_penalty", 1.0))
        sampling = dict(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k) \
            if settings.do_sample else dict(temperature=None, top_p=None, top_k=None)
        return GenerationConfig(
            max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.min_new_tokens,
            do_sample=settings.do_sample, num_beams=1, repetition_penalty=penalty, use_cache=True,
            eos_token_id=eos, pad_token_id=defaults.get("pad_token_id", eos[0]), return_dict_in_generate=True,
            **sampling)

    def describe(self, image: ImageLike, regions: Sequence[RegionLike], task: str = "category", lang: str = "en",
                 generation: GenerationSettings = GenerationSettings(),
                 progress: Optional[Progress] = None) -> list[RegionResult]:
        """Mask and text for every region of one image; SAM 2's encoder runs once for all of them."""
        resolved = resolve_task(task, lang)
        _, features = self.encode(image)
        checked = [as_region(r).validated(features.width, features.height) for r in regions]
        results = []
        for index, region in enumerate(checked):
            if progress:
                progress(index, len(checked), f"region {index + 1}/{len(checked)}")
            analysis = self.analyze(features, region)
            gen = self.generate(resolved, analysis.visual_embeds, generation)
            mask = region.mask if region.mask is not None else (analysis.mask_logits[0, 0] > 0).cpu().numpy()
            results.append(RegionResult(
                index=index, prompt=region.kind, mask=mask, box=mask_box(mask),
                mask_score=analysis.segmentation.mask_score, object_score=analysis.segmentation.object_score,
                task=resolved.name, lang=lang, text=gen.text, fields=parse_output(resolved, gen.text),
                token_ids=gen.token_ids))
        if progress:
            progress(len(checked), len(checked), "done")
        return results

    def describe_video(self, video, prompts, frame: int = 0, task: str = "caption", lang: str = "en",
                       segments=None, window: Optional[int] = None, carry: str = "box",
                       generation: GenerationSettings = GenerationSettings(), fps: Optional[float] = None,
                       progress: Optional[Progress] = None, on_frame=None, on_caption=None, keep_frames: bool = True):
        """Track objects through a video (file, frame folder or frame sequence) and caption each per segment.

        `prompts`: regions on frame `frame`, or `video.VideoPrompt(region, frame=K)` each. `segments`:
        inclusive (start, end) frame ranges, or `window` frames each, default the whole video; each segment's
        caption is conditioned on the object's previous one. `carry="box"` re-prompts every segment with the
        object's last box (the reference), `"memory"` keeps SAM 2's memory across segments. `on_frame`
        receives each frame's `ObjectFrame`s and `on_caption` each `SegmentCaption` as soon as they exist.
        Returns a `video.VideoResult`.
        """
        from .video import describe_video

        return describe_video(self, video, prompts, frame=frame, task=task, lang=lang, segments=segments,
                              window=window, carry=carry, generation=generation, fps=fps, progress=progress,
                              on_frame=on_frame, on_caption=on_caption, keep_frames=keep_frames)
