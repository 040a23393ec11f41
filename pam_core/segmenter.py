"""Frozen SAM 2 (the upstream `sam2` package) plus the decoder taps PAM reads.

The reference forks SAM 2 to return `mid_image_embed` (image tokens after the mask decoder's two-way
transformer) and the mask tokens. Here the same values are captured from the unmodified package with a
forward hook and a wrapper around `MaskDecoder.predict_masks`, and every step follows SAM 2's own code
path for an initial conditioning frame (what the reference runs for a still image).

That path runs through private members of sam2 (no public API exposes them), listed in `SAM2_PRIVATE_API`.
They are pinned to the sam2 minor version tested (pyproject.toml, requirements.txt), and
tests/test_sam2_api.py fails naming the member if a sam2 release moves one.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from .checkpoint import state_dict_mismatch
from .errors import CheckpointError, SettingsError

# What the PAM fork computes with (see the fixture README, section 2.3): masks always from token 0,
# no hole filling, no stability-based mask replacement.
PAM_SAM2_OVERRIDES = {
    "model._target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "model.multimask_output_in_sam": False,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": False,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    "model.binarize_mask_from_pts_for_mem_enc": True,
    "model.fill_hole_area": 0,
}

SAM2_TESTED_VERSION = "1.1.0"
# (class, member, the parameters pam_core passes it by name): the private sam2 API pam_core calls, and
# `MaskDecoder.predict_masks`, which `SAM2Segmenter.tap_decoder` replaces on the instance for one call.
SAM2_PRIVATE_API = (
    ("sam2.modeling.sam2_base.SAM2Base", "_prepare_backbone_features", ("backbone_out",)),
    ("sam2.modeling.sam2_base.SAM2Base", "_prepare_memory_conditioned_features",
     ("frame_idx", "is_init_cond_frame", "current_vision_feats", "current_vision_pos_embeds", "feat_sizes",
      "output_dict", "num_frames")),
    ("sam2.modeling.sam2_base.SAM2Base", "_use_mask_as_output",
     ("backbone_features", "high_res_features", "mask_inputs")),
    ("sam2.modeling.sam2_base.SAM2Base", "_forward_sam_heads",
     ("backbone_features", "point_inputs", "high_res_features", "multimask_output")),
    ("sam2.modeling.sam2_base.SAM2Base", "_encode_new_memory",
     ("current_vision_feats", "feat_sizes", "pred_masks_high_res", "object_score_logits", "is_mask_from_pts")),
    ("sam2.modeling.sam.mask_decoder.MaskDecoder", "_get_stability_scores", ("mask_logits",)),
    ("sam2.modeling.sam.mask_decoder.MaskDecoder", "predict_masks", ()),
)
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def instantiate_sam2(config_path: Path) -> torch.nn.Module:
    """A randomly initialised SAM 2 video predictor from a yaml config, with PAM's overrides applied."""
    cfg = OmegaConf.load(config_path)
    for key, value in PAM_SAM2_OVERRIDES.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    try:
        return instantiate(cfg.model, _recursive_=True)
    except Exception as exc:  # hydra wraps every build error; report the config that failed
        raise CheckpointError(f"cannot build SAM 2 from {config_path}: {exc}") from exc


def build_sam2(config_path: Path, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """SAM 2 from a yaml config, loaded strictly from `state_dict`, frozen, in float32."""
    model = instantiate_sam2(config_path)
    mismatch = state_dict_mismatch(model.state_dict(), state_dict)
    if mismatch:
        raise CheckpointError(f"SAM 2 weights do not fit the config {config_path.name}: {mismatch}; "
                              f"pass the SAM 2.1 config that matches the weights (--sam2-config)")
    model.load_state_dict(state_dict)
    return model.float().eval().requires_grad_(False)


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """(1, 3, size, size) float32, as the reference loads frames: PIL bicubic squash to a square
    (aspect ratio not kept), /255 in float64, cast to float32, ImageNet mean/std."""
    array = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC)) / 255.0
    pixels = torch.from_numpy(array).permute(2, 0, 1).to(torch.float32)
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]
    return ((pixels - mean) / std)[None]


@dataclass
class ImageFeatures:
    """SAM 2 encoder output for one image, ready for any number of prompts (cacheable)."""

    image_embed: torch.Tensor  # (1, 256, 64, 64), with SAM 2's no-memory embedding added
    high_res: list[torch.Tensor]  # the two high-resolution maps the decoder upsamples with
    width: int
    height: int

    def own_copy(self) -> "ImageFeatures":
        """These features as tensors of their own, not views into the batch they were encoded in, so that keeping
        them (in a FeatureCache) does not keep the whole batch."""
        return ImageFeatures(self.image_embed.clone(), [x.clone() for x in self.high_res], self.width, self.height)


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


@dataclass
class Segmentation:
    """One prompt's decoder output and the features PAM's Perceiver reads."""

    low_res_logits: torch.Tensor  # (1, 1, 256, 256) token-0 logits, absent object -> -1024
    mask_score: float  # predicted IoU of the output mask
    object_score: float  # object-presence logit (> 0: present)
    mid_image_embed: torch.Tensor  # (1, 256, 64, 64)
    mid_mask_tokens: torch.Tensor  # (1, 2, 256): [stability-selected token, token 0]
    all_mask_tokens: torch.Tensor  # (1, 4, 256)
    stability: float  # token-0 stability score
    selected_token: int  # decoder token that became the first LLM mask token
    input_mask: Optional[np.ndarray] = None  # the mask itself, for mask prompts

    def mask_logits(self, height: int, width: int) -> torch.Tensor:
        """(1, 1, H, W) logits at image resolution (bilinear, as the reference's video-res consolidation)."""
        return F.interpolate(self.low_res_logits, size=(height, width), mode="bilinear", align_corners=False)


class SAM2Segmenter:
    """Runs a frozen SAM 2 model on images and captures the decoder features PAM needs."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def backbone_features(self, image: Image.Image) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple]]:
        """The image encoder's output as SAM 2's tracking steps read it: per feature level (high resolution
        first), the flattened features, their positional encodings and their (height, width)."""
        return self._backbone(preprocess(image, self.image_size))

    def _backbone(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple]]:
        backbone_out = self.model.forward_image(pixels.to(self.device))
        _, feats, pos, sizes = self.model._prepare_backbone_features(backbone_out=backbone_out)
        return feats, pos, sizes

    def encode(self, image: Image.Image) -> ImageFeatures:
        return self.encode_batch(preprocess(image, self.image_size), [image.size])[0]

    @torch.inference_mode()
    def encode_batch(self, pixels: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[ImageFeatures]:
        """Encode preprocessed images (B, 3, S, S) (see `preprocess`) of original (width, height) `sizes` in
        one encoder pass."""
        sam = self.model
        feats, pos, feat_sizes = self._backbone(pixels)
        image_embed = sam._prepare_memory_conditioned_features(
            frame_idx=0, is_init_cond_frame=True, current_vision_feats=feats[-1:],
            current_vision_pos_embeds=pos[-1:], feat_sizes=feat_sizes[-1:],
            output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, num_frames=1,
        )
        high_res = [x.permute(1, 2, 0).view(x.size(1), x.size(2), *s) for x, s in zip(feats[:-1], feat_sizes[:-1])]
        return [ImageFeatures(image_embed[i:i + 1], [x[i:i + 1] for x in high_res], width, height)
                for i, (width, height) in enumerate(sizes)]

    @torch.inference_mode()
    def segment(self, features: ImageFeatures, point_inputs: Optional[dict] = None,
                masks: Optional[np.ndarray] = None) -> list[Segmentation]:
        """Decode a batch of prompts of one kind on one image's features, one Segmentation each.

        Points (B, N, 2) incl. box corners go through the SAM heads; masks (B, H, W) through SAM 2's
        mask-as-output path (`_use_mask_as_output`, as `add_new_mask` would). All prompts of a batch must
        have the same number of points: padding would add tokens to the decoder and change its output.
        """
        sam = self.model
        count = len(masks) if masks is not None else point_inputs["point_coords"].shape[0]
        image_embed = features.image_embed.expand(count, -1, -1, -1)
        high_res = [x.expand(count, -1, -1, -1) for x in features.high_res]
        with self.tap_decoder() as tap:
            if masks is not None:
                low_res, _, ious, *_, object_score = sam._use_mask_as_output(
                    backbone_features=image_embed, high_res_features=high_res,
                    mask_inputs=torch.cat([self.mask_input(m) for m in masks]))
            else:
                point_inputs = {k: v.to(self.device) for k, v in point_inputs.items()}
                _, _, ious, low_res, _, _, object_score = sam._forward_sam_heads(
                    backbone_features=image_embed, point_inputs=point_inputs,
                    high_res_features=high_res, multimask_output=False)
        mid_mask_tokens, stability, selected = llm_mask_tokens(sam.sam_mask_decoder, tap)
        tokens = tap["mask_tokens"]
        return [
            Segmentation(
                low_res_logits=low_res[i:i + 1].float(),
                mask_score=float(ious[i, 0]),
                object_score=float(object_score[i, 0]),
                mid_image_embed=tap["src"][i:i + 1],
                mid_mask_tokens=mid_mask_tokens[i:i + 1],
                all_mask_tokens=tokens[i:i + 1],
                stability=float(stability[i]),
                selected_token=int(selected[i]),
                input_mask=masks[i] if masks is not None else None,
            )
            for i in range(count)
        ]

    @torch.inference_mode()
    def candidate_masks(self, features: ImageFeatures, point_coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM 2's three multimask outputs for single positive points (B, 2) in SAM input pixels:
        low-resolution logits (B, 3, 256, 256) and predicted IoUs (B, 3), for automatic mask generation.
        Straight through the prompt encoder and decoder, as SAM 2's image predictor does, without the
        full-resolution upsampling of the video path (the candidates are only ranked and boxed)."""
        sam = self.model
        count = point_coords.shape[0]
        points = (point_coords[:, None].to(self.device, torch.float32),
                  torch.ones(count, 1, dtype=torch.int32, device=self.device))
        sparse, dense = sam.sam_prompt_encoder(points=points, boxes=None, masks=None)
        low_res, ious, _, _ = sam.sam_mask_decoder(
            image_embeddings=features.image_embed.expand(count, -1, -1, -1),
            image_pe=sam.sam_prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=True, repeat_image=False,
            high_res_features=[x.expand(count, -1, -1, -1) for x in features.high_res])
        return low_res.float(), ious.float()

    def mask_input(self, mask: np.ndarray) -> torch.Tensor:
        """The mask at SAM's square input size, as SAM 2's `add_new_mask` resizes it."""
        size = self.image_size
        m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None].to(self.device)
        if m.shape[-2:] != (size, size):
            m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            m = (m >= 0.5).float()
        return m

    @contextlib.contextmanager
    def tap_decoder(self):
        """Capture the mask decoder's 4 masks, 4 IoUs, 4 mask tokens and its post-transformer image tokens
        from the decoder calls inside the block (SAM 2's own steps run unchanged around it)."""
        decoder = self.model.sam_mask_decoder
        captured: dict[str, torch.Tensor] = {}
        original = decoder.predict_masks

        def predict_masks(*args, **kwargs):
            masks, ious, mask_tokens, object_scores = original(*args, **kwargs)
            captured.update(masks=masks, ious=ious, mask_tokens=mask_tokens)
            return masks, ious, mask_tokens, object_scores

        def transformer_hook(_module, _inputs, outputs):
            src = outputs[1]
            b, hw, c = src.shape
            side = int(round(hw ** 0.5))
            captured["src"] = src.transpose(1, 2).reshape(b, c, side, side)

        handle = decoder.transformer.register_forward_hook(transformer_hook)
        decoder.predict_masks = predict_masks
        try:
            yield captured
        finally:
            del decoder.predict_masks
            handle.remove()


def llm_mask_tokens(decoder: torch.nn.Module, captured: dict[str, torch.Tensor]):
    """What the PAM fork hands the Perceiver from one tapped decoder call: [stability-selected token, token 0]
    (B, 2, 256), plus token 0's stability (B,) and the selected decoder token (B,) (fixture README 4.1)."""
    stability = decoder._get_stability_scores(mask_logits=captured["masks"][:, 0:1])[:, 0]
    is_stable = stability >= decoder.dynamic_multimask_stability_thresh
    best_multimask = torch.argmax(captured["ious"][:, 1:], dim=-1) + 1
    selected = torch.where(is_stable, torch.zeros_like(best_multimask), best_multimask)
    tokens = captured["mask_tokens"]
    batch = torch.arange(tokens.shape[0], device=tokens.device)
    return torch.stack([tokens[batch, selected], tokens[:, 0]], dim=1), stability, selected
