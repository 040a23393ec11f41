"""The public entry point: load PAM once, then ask for masks and text of image regions."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Sequence, Union

import torch
from PIL import Image

from . import checkpoint
from .analysis import RegionAnalysis, RegionResult, analyze_regions, region_result
from .automask import AutoMaskSettings, object_regions
from .concepts import (
    DEFAULT_MAX_INSTANCES,
    DEFAULT_THRESHOLD,
    ConceptFinder,
    Concepts,
    Sam3Like,
    check_find_settings,
    checked_concepts,
    concept_finder,
)
from .errors import SettingsError
from .generation import Generation, GenerationSettings, decode
from .io import ImageLike, load_image
from .model import PAMModel
from .progress import Progress
from .prompts import Region, RegionLike, as_region
from .segmenter import FeatureCache, ImageFeatures
from .stream import StreamItem, StreamProgressCallback, StreamResult, describe_stream
from .tasks import Task, Tasks, resolve_tasks

if TYPE_CHECKING:  # annotations only: the video package does not import the engine
    from .video import VideoResult, VideoSettings

# (region, task) sequences decoded together on the CPU; on a GPU the default follows free memory.
CPU_MAX_BATCH = 16
GPU_MAX_BATCH = 64


class PAM:
    """Perceive Anything: masks and text for image regions.

    >>> pam = PAM.from_pretrained("Perceive-Anything/PAM-1.5B")
    >>> [r] = pam.describe("photo.jpg", [Region.from_box([70, 110, 270, 340])], task=["category", "detailed"])
    >>> r.texts["category"], r.texts["detailed"], r.mask.shape

    One SAM 2 encoder pass per image (cached for `cache_size` images), every prompt of an image through the
    decoder and Perceiver as one batch, and up to `max_batch` (region, task) sequences decoded together
    (None: 16 on the CPU, from free memory on a GPU).
    """

    # SAM 3 for `find`: a folder, a Hub id or a loaded ConceptFinder (None: facebook/sam3), loaded on first use.
    sam3: Sam3Like = None

    def __init__(self, model: PAMModel, cache_size: int = 4, max_batch: Optional[int] = None,
                 compile_decoder: bool = False):
        if max_batch is not None and max_batch < 1:
            raise SettingsError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.cache = FeatureCache(cache_size)
        self.max_batch = max_batch
        self.compile_decoder = compile_decoder

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = checkpoint.DEFAULT_MODEL, cache_size: int = 4,
                        max_batch: Optional[int] = None, compile_decoder: bool = False, **kwargs) -> "PAM":
        """See `PAMModel.from_pretrained` for `sam2`, `sam2_config`, `device`, `dtype`, `local_files_only`."""
        return cls(PAMModel.from_pretrained(model, **kwargs), cache_size=cache_size, max_batch=max_batch,
                   compile_decoder=compile_decoder)

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

    def analyze_many(self, features: ImageFeatures, regions: Sequence[RegionLike]) -> list[RegionAnalysis]:
        """Decoder and Perceiver for many regions of one image in batches (see `analyze_regions`)."""
        return analyze_regions(self.model, features, regions)

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
        decoded = decode(self.model.llm, prefixes, task_ids, self.model.decoding_spec(settings), return_first_logits,
                         step_llm=self.model.decoding_llm(self.compile_decoder))
        return [[Generation(ids, self.model.decode_text(ids), first)
                 for ids, first in per_region] for per_region in decoded]

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
        regions = object_regions(self.model.segmenter, features, auto)
        return self._describe_regions(features, regions, ["auto"] * len(regions), tasks, lang, generation, progress)

    def find(self, image: ImageLike, concepts: Concepts, task: Tasks = "category", lang: str = "en",
             threshold: float = DEFAULT_THRESHOLD, max_instances: Optional[int] = DEFAULT_MAX_INSTANCES,
             generation: GenerationSettings = GenerationSettings(), sam3: Sam3Like = None,
             progress: Optional[Progress] = None) -> list[RegionResult]:
        """Find every instance of each concept (a noun phrase such as "red car", or several) with SAM 3 and
        describe each one as a box prompt, PAM's training distribution: exactly what `describe` gives for the
        same boxes, plus `concept`, SAM 3's `concept_score` and SAM 3's own `concept_mask`. SAM 3 encodes the
        image once for all concepts, SAM 2 once as always. `threshold` and `max_instances` (per concept, None:
        all) select SAM 3's instances; `sam3` overrides `self.sam3` (see `pam_core.concepts`). No instance
        found is an empty list."""
        names = checked_concepts(concepts)
        check_find_settings(threshold, max_instances)
        tasks = resolve_tasks(task, lang)
        finder = self.concept_finder(sam3)
        pil, features = self.encode(image)
        if progress:
            progress(0, 0, f"finding {', '.join(names)}")
        instances = finder.find(pil, names, threshold=threshold, max_instances=max_instances)
        regions = [instance.region(features.width, features.height) for instance in instances]
        results = self._describe_regions(features, regions, ["concept"] * len(regions), tasks, lang, generation,
                                         progress)
        for result, instance in zip(results, instances):
            result.found_as(instance)
        return results

    def concept_finder(self, sam3: Sam3Like = None) -> ConceptFinder:
        """The SAM 3 `find` uses (`sam3`, else `self.sam3`, else facebook/sam3), on this engine's device."""
        return concept_finder(sam3 if sam3 is not None else self.sam3).to(self.model.device)

    def find_regions(self, image: ImageLike, auto: AutoMaskSettings = AutoMaskSettings()) -> list[Region]:
        """The image's objects as box regions, found as `describe_everything` finds them but not described: e.g.
        the objects of a video's prompt frame, to track with `describe_video`."""
        _, features = self.encode(image)
        return object_regions(self.model.segmenter, features, auto)

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
                results.append(region_result(start + offset, prompts[start + offset], analysis, tasks, per_task, lang))
        if progress:
            progress(len(regions), len(regions), "done")
        return results

    def describe_stream(self, items: Iterable[Union[StreamItem, ImageLike]], task: Tasks = "category",
                        lang: str = "en", generation: GenerationSettings = GenerationSettings(),
                        auto: AutoMaskSettings = AutoMaskSettings(), *, encoder_batch: Optional[int] = None,
                        read_threads: int = 2, lookahead: int = 8, progress: Optional[StreamProgressCallback] = None,
                        cancel=None, find_threshold: float = DEFAULT_THRESHOLD,
                        max_instances: Optional[int] = DEFAULT_MAX_INSTANCES,
                        sam3: Sam3Like = None) -> Iterator[StreamResult]:
        """Describe a dataset: `items` is any iterable of `StreamItem`s (an image with its regions, or None for
        everything), and one `StreamResult` per image comes out as soon as it is done. Images are read ahead
        in background threads, encoded in batches, and the regions of many images decode together (up to
        `max_batch` rows); in float32 each image gets what `describe` gives it. See `pam_core.stream`. Items
        with `concepts` get what `find` gives them (`find_threshold`, `max_instances`, `sam3` as there; SAM 3
        loads at the first such item). Images in the engine's feature cache skip the encoder, and the stream's
        images go into it, as with `describe`.

        >>> for result in pam.describe_stream(StreamItem(path, [Region.from_box(b)]) for path, b in boxes):
        ...     print(result.id, result.error or [r.text for r in result.regions])
        """
        check_find_settings(find_threshold, max_instances)

        def find_concepts(image: Image.Image, concepts: list[str]):
            return self.concept_finder(sam3).find(image, concepts, threshold=find_threshold,
                                                  max_instances=max_instances)

        return describe_stream(self.model, items, task, lang, generation, auto, max_batch=self._max_batch(),
                               compile_decoder=self.compile_decoder, encoder_batch=encoder_batch,
                               read_threads=read_threads, lookahead=lookahead, progress=progress, cancel=cancel,
                               find_concepts=find_concepts, cache=self.cache)

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
