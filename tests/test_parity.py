"""`pam parity` against the official implementation's golden fixture, in both checkpoint layouts."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import FIXTURE, needs_fixture
from pam_core.checkpoint import weight_files
from pam_core.parity import run_parity

pytestmark = needs_fixture


def _fixture_copy(dest, edit_state=None):
    """The fixture with its checkpoint re-saved in the plain layout: one model.safetensors, no SAM 2 copy,
    no lm_head.weight; `edit_state` may change tensors first."""
    for name in ("spec.json", "inputs", "cases", "sam2"):
        (dest / name).symlink_to(FIXTURE / name)
    ckpt = dest / "checkpoint"
    ckpt.mkdir()
    state = {}
    for file in weight_files(FIXTURE / "checkpoint"):
        with safe_open(str(file), framework="pt") as handle:
            state.update({k: handle.get_tensor(k) for k in handle.keys()
                          if not k.startswith("model.vision_tower.") and k != "lm_head.weight"})
    if edit_state:
        edit_state(state)
    save_file(state, str(ckpt / "model.safetensors"))
    for item in (FIXTURE / "checkpoint").iterdir():
        if not item.name.startswith("model"):
            shutil.copy(item, ckpt / item.name)
    return dest


def _by_status(rows):
    out = {}
    for row in rows:
        out.setdefault(row.status, []).append(row)
    return out


# what each kind of case must have compared (besides the per-task decoding rows)
IMAGE_QUANTITIES = {"sam2_mid_image_embed", "mask_logits", "visual_embeds", "inputs_embeds", "first_step_logits",
                    "greedy_ids", "greedy_gencfg_ids", "input_ids", "mask_binary"}
# the video case: per-frame SAM 2 features, masks and scores, the 16 LLM frames and the 5168 embeddings
VIDEO_QUANTITIES = {"sam2_mid_image_embed_frame0", "sam2_mid_image_embed_frame19", "sam2_mid_mask_tokens_all_frames",
                    "masks_binary_all_frames", "object_score_per_frame", "llm_frames", "visual_embeds"}
RELEASE_CASES = {"image_box": IMAGE_QUANTITIES, "image_points": IMAGE_QUANTITIES, "video_box": VIDEO_QUANTITIES}


def _spec_cases() -> dict:
    return {case["name"]: case for case in json.loads((FIXTURE / "spec.json").read_text())["cases"]}


def test_every_fixture_case_is_checked():
    cases = _spec_cases()
    assert set(cases) == set(RELEASE_CASES)
    assert any(case["type"] == "video" for case in cases.values())


# the video case (20 frames through SAM 2 and the LLM) is the slow one; the image cases take about a second each
@pytest.mark.parametrize("case", ["image_box", "image_points", pytest.param("video_box", marks=pytest.mark.slow)])
def test_release_layout_matches_reference(case):
    status = _by_status(run_parity(FIXTURE, cases=[case]))
    assert not status.get("FAIL"), [r for r in status.get("FAIL", [])]
    assert not status.get("NOT SUPPORTED")
    assert RELEASE_CASES[case] <= {r.quantity for r in status["PASS"]}
    # every task of the case was checked
    tasks = {f"{case}/{task}" for task in _spec_cases()[case]["tasks"]}
    assert tasks == {r.case for r in status["PASS"] if r.quantity == "greedy_ids"}


IMAGE_CASES = ["--case", "image_box", "--case", "image_points"]  # the video case runs in the release layout


@pytest.mark.slow
def test_plain_layout_matches_reference_via_cli(tmp_path):
    fixture = _fixture_copy(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pam_core.cli", "parity", str(fixture), *IMAGE_CASES],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed, 0 not supported" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.rstrip().endswith("PASS")]
    assert len(rows) >= 40
    assert any(line.startswith("image_points/brief_cap_en") and "greedy_gencfg_ids" in line for line in rows)
    assert not any(line.startswith("video_box") for line in rows)


def test_parity_detects_a_wrong_weight_and_cli_exits_nonzero(tmp_path):
    def nudge(state):
        bias = "model.mm_projector_semT.2.bias"
        state[bias] = (state[bias].float() + 0.01).to(torch.bfloat16)

    fixture = _fixture_copy(tmp_path, nudge)
    proc = subprocess.run([sys.executable, "-m", "pam_core.cli", "parity", str(fixture), *IMAGE_CASES],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.rstrip().endswith("FAIL") or " FAIL " in line]
    assert any("visual_embeds" in line for line in failed)
    # SAM 2 is untouched by the nudge, so its features still pass
    assert any("sam2_mid_image_embed" in line and "PASS" in line for line in proc.stdout.splitlines())


def test_parity_names_an_unknown_case(pam_cli):
    proc = pam_cli("parity", FIXTURE, "--case", "video_points")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no case video_points" in proc.stderr and "video_box" in proc.stderr
