"""SAM 2's video tracking, one frame at a time, with a memory bank that does not grow with the clip.

`SAM2VideoPredictor` keeps SAM 2's memory of every frame it has seen. `ObjectTracker` runs the same steps but
keeps only what SAM 2's memory attention can still read (the conditioning frame, the last `num_maskmem`
frames and the last `max_obj_ptrs_in_encoder` object pointers), so the numbers are the predictor's while
memory stays bounded however long the clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from PIL import Image

from ..prompts import Region
from ..segmenter import SAM2Segmenter, Segmentation, llm_mask_tokens


@dataclass
class FrameFeatures:
    """SAM 2 backbone output of one frame (device tensors), shared by every object tracked on it."""

    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    sizes: list[tuple[int, int]]


def encode_frame(segmenter: SAM2Segmenter, image: Image.Image) -> FrameFeatures:
    return FrameFeatures(*segmenter.backbone_features(image))


class ObjectTracker:
    """One object tracked by SAM 2 from a prompt on its first frame, as `SAM2VideoPredictor` does it
    (`add_new_points_or_box`/`add_new_mask`, then `propagate_in_video`), with a bounded memory bank.

    Frame indices count steps away from the prompt frame, so the same tracker runs forward or, fed the
    frames in reverse order, backward: SAM 2's reverse tracking mirrors its forward rules (memory from the
    frames after, object pointers at the same distances). `num_frames` is the clip length the predictor
    would have been given (it scales the temporal encoding of object pointers).
    """

    def __init__(self, segmenter: SAM2Segmenter, num_frames: int):
        self.segmenter = segmenter
        self.num_frames = num_frames
        self.memory: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        self.next_frame = 0
        self._memory_pos: Optional[list[torch.Tensor]] = None  # the same for every frame: one copy, as the predictor
        sam = segmenter.model
        stride = getattr(sam, "memory_temporal_stride_for_eval", 1)
        self._history = max(sam.max_obj_ptrs_in_encoder, stride * sam.num_maskmem) + 1

    @torch.inference_mode()
    def step(self, frame: FrameFeatures, prompt: Optional[Region] = None, width: int = 0,
             height: int = 0) -> Segmentation:
        """Track the next frame; the first call needs the `prompt` (validated for a width x height video)."""
        if (self.next_frame == 0) != (prompt is not None):
            raise ValueError("the prompt goes on the tracker's first frame, and only there")
        sam, seg = self.segmenter.model, self.segmenter
        index, is_prompt = self.next_frame, prompt is not None
        points = masks = None
        if is_prompt and prompt.mask is not None:
            masks = seg.mask_input(prompt.mask)
        elif is_prompt:
            points = {k: v.to(seg.device) for k, v in prompt.sam_point_inputs(width, height, seg.image_size).items()}
        with seg.tap_decoder() as tap:
            # The predictor encodes a prompted frame's memory later, from the consolidated mask (below).
            out = sam.track_step(
                frame_idx=index, is_init_cond_frame=is_prompt, current_vision_feats=frame.vision_feats,
                current_vision_pos_embeds=frame.vision_pos, feat_sizes=frame.sizes, point_inputs=points,
                mask_inputs=masks, output_dict=self.memory, num_frames=self.num_frames, run_mem_encoder=not is_prompt)
        if is_prompt:
            self._encode_prompt_memory(frame, out)
        if self._memory_pos is None:
            self._memory_pos = [x.clone() for x in out["maskmem_pos_enc"]]
        compact = {k: out[k] for k in ("maskmem_features", "pred_masks", "obj_ptr", "object_score_logits")}
        compact["maskmem_pos_enc"] = self._memory_pos
        self.memory["cond_frame_outputs" if is_prompt else "non_cond_frame_outputs"][index] = compact
        self.memory["non_cond_frame_outputs"].pop(index - self._history, None)
        self.next_frame += 1
        tokens, stability, selected = llm_mask_tokens(sam.sam_mask_decoder, tap)
        return Segmentation(
            low_res_logits=out["pred_masks"].float(), mask_score=float(tap["ious"][0, 0]),
            object_score=float(out["object_score_logits"][0, 0]), mid_image_embed=tap["src"],
            mid_mask_tokens=tokens, all_mask_tokens=tap["mask_tokens"], stability=float(stability[0]),
            selected_token=int(selected[0]), input_mask=prompt.mask if is_prompt else None)

    def _encode_prompt_memory(self, frame: FrameFeatures, out: dict) -> None:
        """`propagate_in_video_preflight`: the memory of a prompted frame comes from its low-res mask
        upsampled to SAM's input size, encoded as a mask from points, and is stored in bfloat16."""
        sam = self.segmenter.model
        size = sam.image_size
        high_res = F.interpolate(out["pred_masks"], size=(size, size), mode="bilinear", align_corners=False)
        features, pos = sam._encode_new_memory(
            current_vision_feats=frame.vision_feats, feat_sizes=frame.sizes, pred_masks_high_res=high_res,
            object_score_logits=out["object_score_logits"], is_mask_from_pts=True)
        out["maskmem_features"], out["maskmem_pos_enc"] = features.to(torch.bfloat16), pos


def video_mask_logits(seg: Segmentation, height: int, width: int) -> torch.Tensor:
    """(H, W) logits at video resolution (the predictor's `_get_orig_video_res_output`)."""
    return F.interpolate(seg.low_res_logits, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
