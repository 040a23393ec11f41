"""pam_core calls private sam2 members (`SAM2_PRIVATE_API`); a sam2 release that moves one fails here, by name.

The signature checks catch a member that is gone or no longer takes a parameter pam_core passes. The runs on a
tiny random SAM 2 catch what a signature cannot show: the outputs pam_core unpacks, and the decoder taps
(`MaskDecoder.forward` calling `self.predict_masks`, the two-way transformer returning the image tokens second).
"""

import importlib
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pam_core import Region
from pam_core.checkpoint import read_sam2_weights
from pam_core.segmenter import SAM2_PRIVATE_API, SAM2_TESTED_VERSION, SAM2Segmenter, build_sam2
from pam_core.synthetic import write_random_sam2
from pam_core.video.tracker import ObjectTracker, encode_frame

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = version("sam2")


def _problem(class_path: str, member: str, passed: tuple[str, ...]) -> str:
    module_name, _, class_name = class_path.rpartition(".")
    try:
        owner = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return f"class {class_path} is gone (pam_core calls its {member})"
    if not callable(getattr(owner, member, None)):
        return f"{class_name}.{member} ({class_path}) is gone"
    parameters = inspect.signature(getattr(owner, member)).parameters
    lost = [name for name in passed if name not in parameters]
    if lost:
        return f"{class_name}.{member} ({class_path}) no longer takes {', '.join(lost)}"
    return ""


@pytest.mark.parametrize("class_path, member, passed", SAM2_PRIVATE_API, ids=[entry[1] for entry in SAM2_PRIVATE_API])
def test_private_sam2_api_is_where_pam_core_calls_it(class_path, member, passed):
    problem = _problem(class_path, member, passed)
    assert not problem, (f"sam2 {INSTALLED} moved a private member pam_core calls: {problem}. pam_core is tested with "
                         f"sam2 {SAM2_TESTED_VERSION}: install that version, or adapt pam_core and SAM2_PRIVATE_API "
                         "(pam_core/segmenter.py) and the sam2 pin to the new release")


def test_the_sam2_pin_is_the_tested_minor_version():
    major, minor, _ = (int(part) for part in SAM2_TESTED_VERSION.split("."))
    pin = f"sam2>={SAM2_TESTED_VERSION},<{major}.{minor + 1}"
    for name in ("pyproject.toml", "requirements.txt"):
        declared = re.findall(r"sam2[<>=!~][^\"\s#]*", (ROOT / name).read_text(encoding="utf-8"))
        assert declared == [pin], f"{name} declares {declared}; sam2 {SAM2_TESTED_VERSION} is the tested version: {pin}"


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """A random-weight SAM 2.1 with a tiny trunk, built and loaded as PAM loads SAM 2."""
    weights = write_random_sam2(tmp_path_factory.mktemp("sam2"))
    return SAM2Segmenter(build_sam2(weights.with_suffix(".yaml"), read_sam2_weights(weights)))


IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
BOX = Region.from_box([8, 8, 40, 32])


def test_image_path_runs_on_the_installed_sam2(segmenter):
    """Box (SAM heads) and mask (mask as output) prompts through the decoder taps."""
    features = segmenter.encode(IMAGE)
    (by_box,) = segmenter.segment(features, BOX.sam_point_inputs(IMAGE.width, IMAGE.height, segmenter.image_size))
    mask = np.zeros((IMAGE.height, IMAGE.width), dtype=bool)
    mask[8:32, 8:40] = True
    (by_mask,) = segmenter.segment(features, masks=mask[None])
    for seg in (by_box, by_mask):
        assert seg.low_res_logits.shape == (1, 1, 256, 256)
        assert seg.mid_image_embed.shape == (1, 256, 64, 64)
        assert (seg.mid_mask_tokens.shape, seg.all_mask_tokens.shape) == ((1, 2, 256), (1, 4, 256))
    assert "predict_masks" not in vars(segmenter.model.sam_mask_decoder), "tap_decoder left its wrapper behind"


def test_video_path_runs_on_the_installed_sam2(segmenter):
    """A prompted frame (its memory encoded from the mask) and a tracked frame reading that memory."""
    tracker = ObjectTracker(segmenter, num_frames=2)
    prompted = tracker.step(encode_frame(segmenter, IMAGE), BOX, IMAGE.width, IMAGE.height)
    tracked = tracker.step(encode_frame(segmenter, IMAGE))
    assert prompted.low_res_logits.shape == tracked.low_res_logits.shape == (1, 1, 256, 256)
    assert tracker.memory["cond_frame_outputs"][0]["maskmem_features"] is not None
    assert 1 in tracker.memory["non_cond_frame_outputs"]
