"""Every accepted image form, region form and option gives the result the reference path gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pam_core import PAM, GenerationSettings, Region
from pam_core.io import load_image
from pam_core.tasks import parse_output, resolve_task

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pam_tiny"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason="golden fixture ../shared/fixtures/pam_tiny is absent")

IMAGE = FIXTURE / "inputs" / "image.png"
BOX = [70, 110, 270, 340]
FAST = GenerationSettings(max_new_tokens=4)
ZH_DETAILED = "对该目标对象提供一个全面且详细的描述"


@pytest.fixture(scope="module")
def pam():
    return PAM.from_pretrained(FIXTURE / "checkpoint", sam2=FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt",
                               device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """The fixture image as uint8 HxWx3 (it is an 8-bit RGB PNG)."""
    with Image.open(IMAGE) as img:
        assert img.mode == "RGB"
        return np.asarray(img).copy()


@pytest.fixture(scope="module")
def reference(pam):
    """The SAM 2 image embedding of the PNG given by path."""
    pil, features = pam.encode(IMAGE)
    return np.asarray(pil), features.image_embed.clone()


def _contains(haystack: list[int], needle: list[int]) -> bool:
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def _same_result(a, b) -> None:
    assert a.prompt == b.prompt
    assert a.mask.shape == b.mask.shape and a.mask.dtype == bool
    assert np.array_equal(a.mask, b.mask)
    assert a.box == b.box
    assert a.mask_score == b.mask_score
    assert a.object_score == b.object_score
    assert a.token_ids == b.token_ids
    assert a.text == b.text
    assert a.fields == b.fields


# ---------------------------------------------------------------- image forms

def _image_forms(rgb: np.ndarray) -> dict[str, object]:
    h, w, _ = rgb.shape
    alpha = np.random.default_rng(0).integers(0, 256, size=(h, w, 1), dtype=np.uint8)  # must be ignored
    rgba = np.concatenate([rgb, alpha], axis=-1)
    unit = rgb.astype(np.float32) / 255.0
    return {
        "pil_rgb": Image.fromarray(rgb, mode="RGB"),
        "pil_rgba": Image.fromarray(rgba, mode="RGBA"),
        "numpy_uint8_hwc": rgb,
        "numpy_uint8_hwc4": rgba,
        "numpy_float32_unit": unit,
        "numpy_float64_unit": rgb.astype(np.float64) / 255.0,
        "torch_float_hwc": torch.from_numpy(unit.copy()),
        "torch_float_chw": torch.from_numpy(unit.copy()).permute(2, 0, 1).contiguous(),
        "torch_float_1chw": torch.from_numpy(unit.copy()).permute(2, 0, 1)[None].contiguous(),
        "torch_uint8_hwc": torch.from_numpy(rgb.copy()),
        "numpy_uint16_hwc": rgb.astype(np.uint16) * 257,
        "path_str": str(IMAGE),
    }


@needs_fixture
@pytest.mark.parametrize("form", ["pil_rgb", "pil_rgba", "numpy_uint8_hwc", "numpy_uint8_hwc4", "numpy_float32_unit",
                                  "numpy_float64_unit", "torch_float_hwc", "torch_float_chw", "torch_float_1chw",
                                  "torch_uint8_hwc", "numpy_uint16_hwc", "path_str"])
def test_image_form_matches_png_path(pam, rgb, reference, form):
    ref_pixels, ref_embed = reference
    source = _image_forms(rgb)[form]
    pil = load_image(source)
    assert pil.mode == "RGB" and pil.size == (rgb.shape[1], rgb.shape[0])
    assert np.array_equal(np.asarray(pil), ref_pixels), f"{form}: pixels differ from the PNG's"
    _, features = pam.encode(source)
    assert (features.width, features.height) == (640, 480)
    assert torch.equal(features.image_embed, ref_embed), f"{form}: SAM 2 embedding differs from the PNG path's"


@needs_fixture
def test_rgba_alpha_is_dropped_not_composited(rgb):
    h, w, _ = rgb.shape
    transparent = np.concatenate([rgb, np.zeros((h, w, 1), np.uint8)], axis=-1)
    assert np.array_equal(np.asarray(load_image(Image.fromarray(transparent, mode="RGBA"))), rgb)
    assert np.array_equal(np.asarray(load_image(transparent)), rgb)


@needs_fixture
def test_grayscale_forms_match_gray_replicated_to_rgb(pam, rgb):
    gray = np.asarray(Image.fromarray(rgb).convert("L")).copy()
    assert gray.std() > 0  # a real grayscale picture, not a constant
    gray_rgb = np.repeat(gray[..., None], 3, axis=-1)
    _, ref = pam.encode(gray_rgb)
    i16 = Image.fromarray(gray.astype(np.uint16) * 257)
    assert i16.mode.startswith("I;16")
    forms = {
        "pil_L": Image.fromarray(gray, mode="L"),
        "numpy_hw": gray,
        "numpy_hw1": gray[..., None],
        "pil_I;16": i16,
        "numpy_uint16_hw": gray.astype(np.uint16) * 257,
    }
    for name, source in forms.items():
        pil = load_image(source)
        assert pil.mode == "RGB", name
        assert np.array_equal(np.asarray(pil), gray_rgb), f"{name}: pixels differ from the replicated gray"
    for name in ("pil_L", "pil_I;16"):
        _, features = pam.encode(forms[name])
        assert torch.equal(features.image_embed, ref.image_embed), f"{name}: embedding differs"
    # and the gray image really is a different input than the colour one
    _, colour = pam.encode(rgb)
    assert not torch.equal(colour.image_embed, ref.image_embed)


@needs_fixture
def test_gray_png_file_matches_gray_array(tmp_path, rgb):
    gray = np.asarray(Image.fromarray(rgb).convert("L")).copy()
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    expected = np.repeat(gray[..., None], 3, axis=-1)
    assert np.array_equal(np.asarray(load_image(tmp_path / "gray.png")), expected)
    assert np.array_equal(np.asarray(load_image(tmp_path / "gray16.png")), expected)


# ---------------------------------------------------------------- regions

@needs_fixture
def test_box_overhanging_the_edge_is_clipped(pam):
    overhang, clipped = pam.describe(IMAGE, [Region.from_box([-50, 110, 270, 340]), Region.from_box([0, 110, 270, 340])],
                                     generation=FAST)
    _same_result(overhang, clipped)
    assert overhang.token_ids, "generation produced no token"
    # the clipped box is a real change: the unclipped corner would give SAM 2 other inputs
    [inside] = pam.describe(IMAGE, [Region.from_box([20, 110, 270, 340])], generation=FAST)
    assert not (np.array_equal(inside.mask, clipped.mask) and inside.mask_score == clipped.mask_score)


@needs_fixture
def test_box_overhanging_every_edge_is_clipped_to_the_image(pam):
    whole, exact = pam.describe(IMAGE, [Region.from_box([-10, -20, 700, 500]), Region.from_box([0, 0, 640, 480])],
                                generation=FAST)
    _same_result(whole, exact)


@needs_fixture
def test_mask_prompt_returns_the_input_mask(pam):
    mask = np.zeros((480, 640), dtype=bool)
    mask[110:340, 70:270] = True
    mask[200:260, 400:520] = True  # two blobs: the result must not be SAM's re-segmentation
    [result] = pam.describe(IMAGE, [Region.from_mask(mask)], task="brief", generation=FAST)
    assert result.prompt == "mask"
    assert result.mask.dtype == bool and result.mask.shape == (480, 640)
    assert np.array_equal(result.mask, mask)
    assert result.box == (70.0, 110.0, 520.0, 340.0)
    assert result.mask_score == 1.0
    assert result.object_score > 0
    assert isinstance(result.text, str) and result.text.strip()
    assert 0 < len(result.token_ids) <= 4
    assert result.to_dict()["mask_area"] == int(mask.sum())


@needs_fixture
def test_mask_prompt_from_uint8_and_float_arrays(pam):
    mask = np.zeros((480, 640), dtype=bool)
    mask[50:150, 300:420] = True
    results = pam.describe(IMAGE, [Region.from_mask(mask), Region.from_mask(mask.astype(np.uint8) * 255),
                                   Region.from_mask(mask.astype(np.float32))], generation=FAST)
    for other in results[1:]:
        _same_result(results[0], other)


@needs_fixture
def test_dict_region_works_like_region_from_box(pam):
    from_box, from_dict = pam.describe(IMAGE, [Region.from_box(BOX), {"box": BOX}], task="definition", generation=FAST)
    _same_result(from_box, from_dict)
    assert from_dict.prompt == "box"
    assert set(from_dict.fields) == {"label", "definition"}


@needs_fixture
def test_dict_region_with_points_and_labels(pam):
    points, labels = [[470, 150], [430, 200], [150, 220]], [1, 1, 0]
    a, b = pam.describe(IMAGE, [Region.from_points(points, labels), {"points": points, "labels": labels}],
                        generation=FAST)
    _same_result(a, b)
    assert a.prompt == "points"


@needs_fixture
def test_several_regions_in_one_call_equal_one_call_each(pam):
    mask = np.zeros((480, 640), dtype=bool)
    mask[300:420, 350:600] = True
    regions = [Region.from_box(BOX), Region.from_points([[470, 150], [430, 200], [150, 220]], [1, 1, 0]),
               Region.from_mask(mask), Region(box=(300.0, 50.0, 600.0, 300.0), points=((450.0, 150.0),), labels=(1,))]
    together = pam.describe(IMAGE, regions, task="detailed", generation=FAST)
    assert [r.index for r in together] == [0, 1, 2, 3]
    assert [r.prompt for r in together] == ["box", "points", "mask", "box+points"]
    for region, joint in zip(regions, together):
        [alone] = pam.describe(IMAGE, [region], task="detailed", generation=FAST)
        assert alone.index == 0
        _same_result(joint, alone)
    # the regions are not all alike, so the comparison above is not vacuous
    assert len({r.mask.tobytes() for r in together}) == len(regions)


@needs_fixture
def test_progress_is_reported_per_region(pam):
    calls = []
    pam.describe(IMAGE, [Region.from_box(BOX), {"box": [0, 0, 100, 100]}], generation=FAST,
                 progress=lambda i, n, msg: calls.append((i, n)))
    assert calls == [(0, 2), (1, 2), (2, 2)]


# ---------------------------------------------------------------- generation options

@needs_fixture
def test_sampling_with_a_seed_is_reproducible(pam):
    settings = GenerationSettings(max_new_tokens=4, do_sample=True, temperature=1.0, seed=1234)
    state = torch.get_rng_state()
    [first] = pam.describe(IMAGE, [Region.from_box(BOX)], generation=settings)
    [second] = pam.describe(IMAGE, [Region.from_box(BOX)], generation=settings)
    assert first.token_ids and first.token_ids == second.token_ids
    assert first.text == second.text
    assert torch.equal(torch.get_rng_state(), state), "seeded sampling must not consume the global RNG"


@needs_fixture
def test_greedy_is_deterministic(pam):
    [a] = pam.describe(IMAGE, [Region.from_box(BOX)], generation=FAST)
    torch.manual_seed(99)  # greedy decoding must not depend on the global RNG
    [b] = pam.describe(IMAGE, [Region.from_box(BOX)], generation=FAST)
    _same_result(a, b)
    assert 0 < len(a.token_ids) <= 4


@needs_fixture
def test_bfloat16_on_cpu_loads_and_describes():
    pam16 = PAM.from_pretrained(FIXTURE / "checkpoint", sam2=FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt",
                                device="cpu", dtype="bfloat16", local_files_only=True)
    assert pam16.model.dtype == torch.bfloat16
    assert next(pam16.model.llm.parameters()).dtype == torch.bfloat16
    assert next(pam16.model.sam2.parameters()).dtype == torch.float32  # SAM 2 stays float32
    results = pam16.describe(IMAGE, [Region.from_box(BOX), Region.from_points([[470, 150]])], generation=FAST)
    assert len(results) == 2
    for result in results:
        assert isinstance(result.text, str)
        assert result.mask.shape == (480, 640) and result.mask.dtype == bool
        assert 0 < len(result.token_ids) <= 4
        assert np.isfinite(result.mask_score) and np.isfinite(result.object_score)


# ---------------------------------------------------------------- tasks and languages

def test_chinese_task_strings():
    assert resolve_task("detailed", "zh").instruction == ZH_DETAILED
    assert resolve_task("category", "zh").instruction == "对该目标对象进行分类并提供标签"
    assert resolve_task("detailed", "en").instruction == "Provide a comprehensive and detailed description for this subject."
    assert resolve_task("detailed", "zh").lang == "zh"


@needs_fixture
def test_chinese_prompt_ids_contain_the_chinese_task(pam):
    hidden = pam.model.config.llm.hidden_size
    visual = torch.zeros(1042, hidden)
    zh_ids = pam.model.tokenize(ZH_DETAILED)
    assert zh_ids and pam.model.tokenizer.decode(zh_ids) == ZH_DETAILED
    embeds, ids = pam.model.prompt_embeds(resolve_task("detailed", "zh"), visual)
    assert _contains(ids, zh_ids)
    assert ids.count(-200) == 1 and embeds.shape == (len(ids) - 1 + 1042, hidden)
    _, en_ids = pam.model.prompt_embeds(resolve_task("detailed", "en"), visual)
    assert not _contains(en_ids, zh_ids)
    [result] = pam.describe(IMAGE, [Region.from_box(BOX)], task="detailed", lang="zh", generation=FAST)
    assert result.lang == "zh" and result.task == "detailed" and isinstance(result.text, str)
    [en] = pam.describe(IMAGE, [Region.from_box(BOX)], task="detailed", lang="en", generation=FAST)
    assert np.array_equal(result.mask, en.mask)  # the language changes the text prompt only


@pytest.mark.parametrize("text, label, definition", [
    ("Spoon: a utensil for eating.", "Spoon", "a utensil for eating."),
    ("Spoon. A utensil.", "Spoon", "A utensil."),
    ("Spoon", "Spoon", ""),
    ("Spoon\nA utensil for eating.", "Spoon", "A utensil for eating."),
    ("  Spoon：一种餐具。 ", "Spoon", "一种餐具。"),
])
def test_parse_definition_output(text, label, definition):
    assert parse_output(resolve_task("definition"), text) == {"label": label, "definition": definition}


def test_parse_category_and_caption_output():
    assert parse_output(resolve_task("category"), "Spoon.") == {"label": "Spoon"}
    assert parse_output(resolve_task("brief"), "A spoon on a table.") == {}
    assert parse_output(resolve_task("describe the colour of it"), "Red.") == {}
