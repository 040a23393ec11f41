"""Numerical parity against golden fixtures produced by the official PAM implementation.

A fixture folder holds `checkpoint/` (official layout), `sam2/` (weights + yaml), `spec.json` (cases:
image, visual prompt, task prompts) and `cases/<case>/...` (expected arrays). Every quantity a fixture
provides is compared with the tolerances of its README (section 5); a missing file is simply not checked.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .analysis import RegionAnalysis
from .engine import PAM
from .errors import CheckpointError
from .generation import GenerationSettings
from .prompts import Region
from .tasks import IMAGE_PLACEHOLDER, task_for_instruction

FEATURE_ATOL = 1e-4
LOGITS_ATOL = 5e-4


@dataclass
class ParityRow:
    case: str
    quantity: str
    status: str  # PASS, FAIL or NOT SUPPORTED
    max_abs_err: Optional[float] = None
    tolerance: Optional[float] = None
    detail: str = ""


def _compare(case: str, quantity: str, expected: np.ndarray, actual: torch.Tensor | np.ndarray,
             atol: float) -> ParityRow:
    got = actual.detach().float().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    if got.size != expected.size:
        return ParityRow(case, quantity, "FAIL", detail=f"shape {got.shape} vs expected {expected.shape}")
    err = float(np.abs(got.reshape(expected.shape).astype(np.float64) - expected).max()) if expected.size else 0.0
    return ParityRow(case, quantity, "PASS" if err <= atol else "FAIL", err, atol)


def _exact(case: str, quantity: str, expected, actual) -> ParityRow:
    same = list(expected) == list(actual)
    detail = "" if same else f"expected {list(expected)[:8]}..., got {list(actual)[:8]}..."
    return ParityRow(case, quantity, "PASS" if same else "FAIL", detail=detail)


def fixture_sam2_weights(fixture: Path) -> Path:
    found = sorted(p for p in (fixture / "sam2").glob("*") if p.suffix in (".pt", ".safetensors"))
    if len(found) != 1:
        raise CheckpointError(f"{fixture / 'sam2'} must hold exactly one SAM 2 weights file, found {len(found)}")
    return found[0]


def run_parity(fixture: str | Path, device: str = "cpu", report: Optional[Callable[[ParityRow], None]] = None,
               cases: Optional[Sequence[str]] = None) -> list[ParityRow]:
    """Load the fixture's checkpoint, run every case (or the named `cases`) and compare; `report` sees each
    row as it is made.

    On CUDA, TF32 is switched off for the run: PyTorch lets cuDNN convolutions use it by default, which
    moves SAM 2's features by ~1e-3, and a parity check compares IEEE float32.
    """
    with ieee_float32():
        return _run_parity(Path(fixture), device, report, cases)


@contextlib.contextmanager
def ieee_float32():
    """IEEE float32 on CUDA in the block (no TF32 in matmuls or cuDNN convolutions), as before after it."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _run_parity(fixture: Path, device: str, report: Optional[Callable[[ParityRow], None]],
                cases: Optional[Sequence[str]]) -> list[ParityRow]:
    spec_file = fixture / "spec.json"
    if not spec_file.is_file():
        raise CheckpointError(f"{fixture} is not a parity fixture (no spec.json)")
    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    known = [case["name"] for case in spec["cases"]]
    unknown = sorted(set(cases or ()) - set(known))
    if unknown:
        raise CheckpointError(f"{fixture} has no case {', '.join(unknown)}; its cases: {', '.join(known)}")
    pam = PAM.from_pretrained(fixture / "checkpoint", sam2=fixture_sam2_weights(fixture), device=device,
                              dtype="float32", local_files_only=True)
    rows: list[ParityRow] = []

    def add(row: ParityRow) -> None:
        rows.append(row)
        if report:
            report(row)

    for case in spec["cases"]:
        if cases and case["name"] not in cases:
            continue
        if case["type"] == "image":
            _image_case(pam, fixture, case, add)
        elif case["type"] == "video":
            _video_case(pam, fixture, case, add)
        else:
            add(ParityRow(case["name"], f"{case['type']} case", "NOT SUPPORTED", detail="unknown case type"))
    return rows


def _region(case: dict) -> Region:
    prompt = np.asarray(case["visual_prompt"], dtype=np.float64)
    if prompt.ndim == 1 and prompt.size == 4:  # the reference's rule (_prepare_visual_prompts)
        return Region.from_box(prompt)
    return Region.from_points(prompt.reshape(-1, 2), case.get("vp_labels"))


def _image_case(pam: PAM, fixture: Path, case: dict, add) -> None:
    name = case["name"]
    folder = fixture / "cases" / name
    _, features = pam.encode(fixture / case["image"])
    analysis: RegionAnalysis = pam.analyze(features, _region(case))
    seg = analysis.segmentation
    arrays = {
        "sam2_mid_image_embed.npy": seg.mid_image_embed,
        "sam2_mid_mask_tokens.npy": seg.mid_mask_tokens,
        "sam2_decoder_all4_mask_tokens.npy": seg.all_mask_tokens,
        "perceiver_sem_tokens.npy": analysis.sem_tokens,
        "mask_logits.npy": analysis.mask_logits,
        "visual_embeds.npy": analysis.visual_embeds,
    }
    for file, actual in arrays.items():
        if (folder / file).is_file():
            add(_compare(name, file[:-4], np.load(folder / file), actual, FEATURE_ATOL))
    if (folder / "mask_logits.npy").is_file():
        add(_binary_mask_row(name, np.load(folder / "mask_logits.npy"), analysis.mask_logits))
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    sam = summary.get("sam2", {})
    if "object_score_logits" in sam:
        add(_compare(name, "object_score", np.asarray(sam["object_score_logits"]), np.asarray([seg.object_score]),
                     FEATURE_ATOL))
    if "first_llm_mask_token_is_decoder_token" in sam:
        add(_exact(name, "selected_mask_token", [sam["first_llm_mask_token_is_decoder_token"]], [seg.selected_token]))
    for task_key, prompt in case["tasks"].items():
        _task(pam, f"{name}/{task_key}", folder / task_key, prompt, analysis.visual_embeds, add)


def _video_case(pam: PAM, fixture: Path, case: dict, add) -> None:
    """The reference's video path: prompt on frame 0, SAM 2 propagation over every frame, 16 LLM frames."""
    from .video import open_video
    from .video.pipeline import ClipEmbeds
    from .video.tracker import ObjectTracker, encode_frame, video_mask_logits

    name = case["name"]
    folder = fixture / "cases" / name
    source = open_video([fixture / frame for frame in case["frames"]])
    info = source.info
    region = _region(case).validated(info.width, info.height)
    segmenter = pam.model.segmenter
    tracker = ObjectTracker(segmenter, info.num_frames)
    clip = ClipEmbeds(pam.model, 0, info.num_frames - 1)
    tokens, scores, logits = [], [], []
    for index, image, _ in source.frames():
        seg = tracker.step(encode_frame(segmenter, image), region if index == 0 else None, info.width, info.height)
        clip.add(index, seg)
        tokens.append(seg.mid_mask_tokens)
        scores.append(seg.object_score)
        logits.append(video_mask_logits(seg, info.height, info.width))
        embed_file = folder / f"sam2_mid_image_embed_frame{index}.npy"
        if embed_file.is_file():
            add(_compare(name, embed_file.stem, np.load(embed_file), seg.mid_image_embed, FEATURE_ATOL))
    if (folder / "sam2_mid_mask_tokens_all_frames.npy").is_file():
        add(_compare(name, "sam2_mid_mask_tokens_all_frames", np.load(folder / "sam2_mid_mask_tokens_all_frames.npy"),
                     torch.cat(tokens), FEATURE_ATOL))
    if (folder / "masks_binary_all_frames.npy").is_file():
        add(_binary_video_masks_row(name, np.load(folder / "masks_binary_all_frames.npy"), torch.stack(logits)))
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    sam = summary.get("sam2", {})
    if "object_score_logits_per_frame" in sam:
        expected = [sam["object_score_logits_per_frame"][str(i)][0] for i in range(info.num_frames)]
        add(_compare(name, "object_score_per_frame", np.asarray(expected), np.asarray(scores), FEATURE_ATOL))
    if "frames_fed_to_llm" in sam:
        add(_exact(name, "llm_frames", sam["frames_fed_to_llm"], clip.frames))
    visual_embeds = clip.visual_embeds()
    if (folder / "visual_embeds.npy").is_file():
        add(_compare(name, "visual_embeds", np.load(folder / "visual_embeds.npy"), visual_embeds, FEATURE_ATOL))
    for task_key, prompt in case["tasks"].items():
        _task(pam, f"{name}/{task_key}", folder / task_key, prompt, visual_embeds, add)


def _binary_video_masks_row(case: str, expected: np.ndarray, logits: torch.Tensor) -> ParityRow:
    """The fixture keeps only binary video masks: they must agree except where our logit is within the
    feature tolerance of 0 (the image cases apply the same rule to the expected logit)."""
    got = logits.float().cpu().numpy().reshape(expected.shape)
    differ = ((got > 0) != expected) & (np.abs(got) > FEATURE_ATOL)
    count = int(differ.sum())
    return ParityRow(case, "masks_binary_all_frames", "PASS" if count == 0 else "FAIL", float(count), 0.0,
                     detail="" if count == 0 else f"{count} pixels differ")


def _binary_mask_row(case: str, expected_logits: np.ndarray, actual: torch.Tensor) -> ParityRow:
    """Binary masks must agree except where the expected logit is within the feature tolerance of 0."""
    got = actual.float().cpu().numpy().reshape(expected_logits.shape) > 0
    differ = (got != (expected_logits > 0)) & (np.abs(expected_logits) > FEATURE_ATOL)
    count = int(differ.sum())
    return ParityRow(case, "mask_binary", "PASS" if count == 0 else "FAIL", float(count), 0.0,
                     detail="" if count == 0 else f"{count} pixels differ")


def _task(pam: PAM, case: str, folder: Path, prompt: str, visual_embeds: torch.Tensor, add) -> None:
    instruction = prompt.split(IMAGE_PLACEHOLDER + "\n", 1)[-1]
    task = task_for_instruction(instruction)
    embeds, ids = pam.model.prompt_embeds(task, visual_embeds)
    if (folder / "prompt.json").is_file():
        add(_exact(case, "input_ids", json.loads((folder / "prompt.json").read_text())["input_ids"], ids))
    if (folder / "inputs_embeds.npy").is_file():
        add(_compare(case, "inputs_embeds", np.load(folder / "inputs_embeds.npy"), embeds, FEATURE_ATOL))
    if not (folder / "generation.json").is_file():
        return
    record = json.loads((folder / "generation.json").read_text(encoding="utf-8"))
    kwargs = record.get("generation_kwargs", {})
    greedy = pam.generate(task, visual_embeds, GenerationSettings(
        max_new_tokens=kwargs.get("max_new_tokens", 20), min_new_tokens=kwargs.get("min_new_tokens", 0),
        repetition_penalty=kwargs.get("repetition_penalty") or 1.0), return_first_logits=True)
    if (folder / "first_step_logits.npy").is_file():
        expected = np.load(folder / "first_step_logits.npy")
        add(_compare(case, "first_step_logits", expected, greedy.first_step_logits, LOGITS_ATOL))
        top = record.get("first_step_top50", {}).get("ids")
        if top:
            got = torch.topk(greedy.first_step_logits, len(top)).indices.tolist()
            add(_exact(case, "first_step_top50_ids", top, got))
    add(_exact(case, "greedy_ids", record["greedy"]["ids"], greedy.token_ids))
    add(_exact(case, "greedy_text", [record["greedy"]["text"]], [greedy.text]))
    if "greedy_gencfg" in record:
        kwargs = record.get("generation_kwargs_gencfg", kwargs)
        gencfg = pam.generate(task, visual_embeds, GenerationSettings(
            max_new_tokens=kwargs.get("max_new_tokens", 20), min_new_tokens=kwargs.get("min_new_tokens", 0)))
        add(_exact(case, "greedy_gencfg_ids", record["greedy_gencfg"]["ids"], gencfg.token_ids))


def format_row(row: ParityRow) -> str:
    err = "" if row.max_abs_err is None else f"{row.max_abs_err:.3e}"
    tol = "" if row.tolerance is None else f"{row.tolerance:.0e}"
    detail = "  " + row.detail if row.detail else ""
    return f"{row.case:<28} {row.quantity:<34} {err:>10} {tol:>6}  {row.status}{detail}"
