"""Every accepted image form, region form and option gives the result the reference path gives.

SAM 2's encoder and the per-region decoder dominate the runtime on CPU, so the model, the encoded
fixture image and one multi-region describe call are module fixtures that several tests compare against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import FIXTURE, needs_fixture
from pam_core import PAM, GenerationSettings, Region
from pam_core.checkpoint import resolve_sam2, sam2_config_path
from pam_core.io import load_image, load_mask, write_atomic, write_json
from pam_core.tasks import parse_output, resolve_task

IMAGE = FIXTURE / "inputs" / "image.png"
WIDTH, HEIGHT = 640, 480
CLIPPED = [0, 110, 270, 340]
OVERHANG = [-50, 110, 270, 340]
POINTS, LABELS = [[470, 150], [430, 200], [150, 220]], [1, 1, 0]
FAST = GenerationSettings(max_new_tokens=4)
ZH_DETAILED = "对该目标对象提供一个全面且详细的描述"


def _two_blob_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[110:340, 70:270] = True
    mask[200:260, 400:520] = True  # a second blob: the result must be this mask, not SAM's re-segmentation
    return mask


# index: what the region is
REGIONS = {
    "box": Region.from_box(CLIPPED),
    "dict_box": {"box": CLIPPED},
    "overhang": Region.from_box(OVERHANG),
    "points": Region.from_points(POINTS, LABELS),
    "mask": Region.from_mask(_two_blob_mask()),
}
INDEX = {name: i for i, name in enumerate(REGIONS)}


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """The fixture image as uint8 HxWx3 (it is an 8-bit RGB PNG)."""
    with Image.open(IMAGE) as img:
        assert img.mode == "RGB" and img.size == (WIDTH, HEIGHT)
        return np.asarray(img).copy()


@pytest.fixture(scope="module")
def reference(pam):
    """(pixels, SAM 2 features) of the PNG given by its path."""
    pil, features = pam.encode(IMAGE)
    return np.asarray(pil).copy(), features


@pytest.fixture(scope="module")
def joint(pam):
    """All REGIONS described in one call (definition task), with the progress calls it made."""
    calls = []
    results = pam.describe(IMAGE, list(REGIONS.values()), task="definition", generation=FAST,
                           progress=lambda i, n, msg: calls.append((i, n)))
    return results, calls


def _contains(haystack: list[int], needle: list[int]) -> bool:
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def _same_result(a, b) -> None:
    assert a.prompt == b.prompt
    assert a.mask.shape == b.mask.shape == (HEIGHT, WIDTH) and a.mask.dtype == b.mask.dtype == bool
    assert np.array_equal(a.mask, b.mask)
    assert a.box == b.box
    # batched and single decoder passes round differently in the last bits; masks and ids must not change
    assert a.mask_score == pytest.approx(b.mask_score, rel=1e-5, abs=1e-6)
    assert a.object_score == pytest.approx(b.object_score, rel=1e-5, abs=1e-6)
    assert a.token_ids == b.token_ids
    assert a.text == b.text
    assert a.fields == b.fields


# ---------------------------------------------------------------- image forms

def _image_forms(rgb: np.ndarray) -> dict[str, object]:
    alpha = np.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 1), dtype=np.uint8)  # must be ignored
    rgba = np.concatenate([rgb, alpha], axis=-1)
    unit = rgb.astype(np.float32) / 255.0
    return {
        "path_str": str(IMAGE),
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
    }


@needs_fixture
def test_every_image_form_gives_the_png_pixels(rgb, reference):
    ref_pixels, _ = reference
    assert np.array_equal(ref_pixels, rgb)
    for form, source in _image_forms(rgb).items():
        pil = load_image(source)
        assert pil.mode == "RGB" and pil.size == (WIDTH, HEIGHT), form
        assert np.array_equal(np.asarray(pil), ref_pixels), f"{form}: pixels differ from the PNG's"


# One SAM 2 encode each (about a second on CPU): PIL, tensor (float CxHxW) and 16-bit array paths; the
# pixel test above covers every form, and equal pixels give equal embeddings.
@needs_fixture
@pytest.mark.parametrize("form", ["pil_rgba", "torch_float_chw", "numpy_uint16_hwc"])
def test_image_form_gives_the_png_embedding(pam, rgb, reference, form):
    _, ref = reference
    _, features = pam.encode(_image_forms(rgb)[form])
    assert (features.width, features.height) == (WIDTH, HEIGHT)
    assert torch.equal(features.image_embed, ref.image_embed), f"{form}: SAM 2 embedding differs from the PNG path's"
    for mine, theirs in zip(features.high_res, ref.high_res):
        assert torch.equal(mine, theirs)


@needs_fixture
def test_rgba_alpha_is_dropped_not_composited(rgb):
    transparent = np.concatenate([rgb, np.zeros((HEIGHT, WIDTH, 1), np.uint8)], axis=-1)
    assert np.array_equal(np.asarray(load_image(Image.fromarray(transparent, mode="RGBA"))), rgb)
    assert np.array_equal(np.asarray(load_image(transparent)), rgb)


@needs_fixture
def test_grayscale_forms_match_gray_replicated_to_rgb(pam, rgb, reference, tmp_path):
    gray = np.asarray(Image.fromarray(rgb).convert("L")).copy()
    assert gray.std() > 0  # a real grayscale picture, not a constant
    gray_rgb = np.repeat(gray[..., None], 3, axis=-1)
    i16 = Image.fromarray(gray.astype(np.uint16) * 257)
    assert i16.mode.startswith("I;16")
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    i16.save(tmp_path / "gray16.png")
    forms = {
        "pil_L": Image.fromarray(gray, mode="L"),
        "numpy_hw": gray,
        "numpy_hw1": gray[..., None],
        "pil_I;16": i16,
        "numpy_uint16_hw": gray.astype(np.uint16) * 257,
        "png_L": tmp_path / "gray.png",
        "png_16bit": tmp_path / "gray16.png",
    }
    for name, source in forms.items():
        pil = load_image(source)
        assert pil.mode == "RGB", name
        assert np.array_equal(np.asarray(pil), gray_rgb), f"{name}: pixels differ from the replicated gray"
    _, replicated = pam.encode(gray_rgb)
    _, from_i16 = pam.encode(forms["pil_I;16"])
    assert torch.equal(from_i16.image_embed, replicated.image_embed)
    # the gray image really is another input than the colour one
    assert not torch.equal(replicated.image_embed, reference[1].image_embed)


# ---------------------------------------------------------------- regions

@needs_fixture
def test_box_overhanging_the_edge_is_clipped(joint):
    results, _ = joint
    overhang, clipped = results[INDEX["overhang"]], results[INDEX["box"]]
    assert overhang.token_ids[overhang.task], "generation produced no token"
    _same_result(overhang, clipped)


def test_box_overhanging_every_edge_is_clipped_to_the_image():
    assert Region.from_box([-10, -20, 700, 500]).validated(WIDTH, HEIGHT).box == (0.0, 0.0, 640.0, 480.0)
    assert Region.from_box(OVERHANG).validated(WIDTH, HEIGHT).box == (0.0, 110.0, 270.0, 340.0)
    assert Region.from_box([600, 400, 641, 481]).validated(WIDTH, HEIGHT).box == (600.0, 400.0, 640.0, 480.0)


@needs_fixture
def test_mask_prompt_returns_the_input_mask(joint):
    results, _ = joint
    result, mask = results[INDEX["mask"]], _two_blob_mask()
    assert result.prompt == "mask"
    assert result.mask.dtype == bool and result.mask.shape == (HEIGHT, WIDTH)
    assert np.array_equal(result.mask, mask)
    assert result.box == (70.0, 110.0, 520.0, 340.0)
    assert result.mask_score == 1.0
    assert result.object_score > 0
    assert isinstance(result.text, str) and result.text.strip()
    assert 0 < len(result.token_ids[result.task]) <= 4
    assert result.to_dict()["mask_area"] == int(mask.sum())


def test_mask_forms_load_as_the_same_bool_mask(tmp_path):
    mask = _two_blob_mask()
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    for source in (mask, mask.astype(np.uint8) * 255, mask.astype(np.float32), torch.from_numpy(mask),
                   mask[None], tmp_path / "mask.png", Image.open(tmp_path / "mask.png")):
        loaded = load_mask(source)
        assert loaded.dtype == bool and np.array_equal(loaded, mask)


@pytest.mark.parametrize("filename, config", [("sam2.1_hiera_small.pt", "sam2.1_hiera_s.yaml"),
                                              ("sam2.1_hiera_base_plus.safetensors", "sam2.1_hiera_b+.yaml"),
                                              ("my_sam2.pt", "sam2.1_hiera_l.yaml")])
def test_sam2_weights_file_gets_the_config_of_its_released_name(tmp_path, filename, config):
    weights = tmp_path / filename
    weights.touch()
    assert resolve_sam2(weights) == (weights, sam2_config_path(config))
    weights.with_suffix(".yaml").touch()  # a yaml beside the weights wins
    assert resolve_sam2(weights) == (weights, weights.with_suffix(".yaml"))


@needs_fixture
def test_dict_region_works_like_region_from_box(joint):
    results, _ = joint
    from_box, from_dict = results[INDEX["box"]], results[INDEX["dict_box"]]
    _same_result(from_box, from_dict)
    assert from_dict.prompt == "box"
    assert set(from_dict.fields) == {"label", "definition"}
    assert from_dict.index == INDEX["dict_box"]


@needs_fixture
def test_several_regions_in_one_call_equal_one_call_each(pam, joint):
    results, calls = joint
    assert [r.index for r in results] == list(range(len(REGIONS)))
    assert [r.prompt for r in results] == ["box", "box", "box", "points", "mask"]
    assert calls == [(0, len(REGIONS)), (len(REGIONS), len(REGIONS))]  # one batch of regions, then done
    # the regions are not all alike, so the comparison below is not vacuous
    assert len({results[INDEX[name]].mask.tobytes() for name in ("box", "points", "mask")}) == 3
    torch.manual_seed(99)  # greedy decoding must not depend on the global RNG
    for name in ("box", "points", "mask"):
        [alone] = pam.describe(IMAGE, [REGIONS[name]], task="definition", generation=FAST)
        assert alone.index == 0
        _same_result(results[INDEX[name]], alone)


# ---------------------------------------------------------------- generation options

@pytest.fixture(scope="module")
def box_embeds(pam, reference):
    return pam.analyze(reference[1], Region.from_box(CLIPPED)).visual_embeds


@needs_fixture
def test_sampling_with_a_seed_is_reproducible(pam, box_embeds):
    settings = GenerationSettings(max_new_tokens=4, do_sample=True, temperature=1.0, seed=1234)
    task = resolve_task("category")
    state = torch.get_rng_state()
    first = pam.generate(task, box_embeds, settings)
    second = pam.generate(task, box_embeds, settings)
    assert first.token_ids and first.token_ids == second.token_ids
    assert first.text == second.text
    assert torch.equal(torch.get_rng_state(), state), "seeded sampling must not consume the global RNG"


@needs_fixture
def test_bfloat16_on_cpu_loads_and_describes():
    pam16 = PAM.from_pretrained(FIXTURE / "checkpoint", sam2=FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt",
                                device="cpu", dtype="bfloat16", local_files_only=True)
    assert pam16.model.dtype == torch.bfloat16
    assert next(pam16.model.llm.parameters()).dtype == torch.bfloat16
    assert next(pam16.model.sam2.parameters()).dtype == torch.float32  # SAM 2 always runs in float32
    [result] = pam16.describe(IMAGE, [Region.from_box(CLIPPED)], generation=FAST)
    assert isinstance(result.text, str)
    assert result.mask.shape == (HEIGHT, WIDTH) and result.mask.dtype == bool
    assert 0 < len(result.token_ids[result.task]) <= 4
    assert np.isfinite(result.mask_score) and np.isfinite(result.object_score)


# ---------------------------------------------------------------- tasks and languages

def test_chinese_task_strings():
    assert resolve_task("detailed", "zh").instruction == ZH_DETAILED
    assert resolve_task("category", "zh").instruction == "对该目标对象进行分类并提供标签"
    detailed_en = "Provide a comprehensive and detailed description for this subject."
    assert resolve_task("detailed", "en").instruction == detailed_en
    assert resolve_task("detailed", "zh").lang == "zh"


@needs_fixture
def test_chinese_prompt_ids_contain_the_chinese_task(pam, box_embeds):
    hidden = pam.model.config.llm.hidden_size
    zh_ids = pam.model.tokenize(ZH_DETAILED)
    assert zh_ids and pam.model.tokenizer.decode(zh_ids) == ZH_DETAILED
    embeds, ids = pam.model.prompt_embeds(resolve_task("detailed", "zh"), box_embeds)
    assert _contains(ids, zh_ids)
    assert ids.count(-200) == 1 and embeds.shape == (len(ids) - 1 + box_embeds.shape[0], hidden)
    _, en_ids = pam.model.prompt_embeds(resolve_task("detailed", "en"), box_embeds)
    assert not _contains(en_ids, zh_ids)
    assert _contains(en_ids, pam.model.tokenize("Provide a comprehensive and detailed description for this subject."))
    generation = pam.generate(resolve_task("detailed", "zh"), box_embeds, FAST)
    assert isinstance(generation.text, str) and 0 < len(generation.token_ids) <= 4


@pytest.mark.parametrize("text, label, definition", [
    ("Spoon: a utensil for eating.", "Spoon", "a utensil for eating."),
    ("Spoon. A utensil.", "Spoon", "A utensil."),
    ("Spoon", "Spoon", ""),
    ("Spoon\nA utensil for eating.", "Spoon", "A utensil for eating."),
    ("  勺子：一种餐具。 ", "勺子", "一种餐具。"),
])
def test_parse_definition_output(text, label, definition):
    assert parse_output(resolve_task("definition"), text) == {"label": label, "definition": definition}


def test_parse_category_and_caption_output():
    assert parse_output(resolve_task("category"), "Spoon.") == {"label": "Spoon"}
    assert parse_output(resolve_task("brief"), "A spoon on a table.") == {}
    assert parse_output(resolve_task("describe the colour of it"), "Red.") == {}


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    """Outputs written through a temporary file (results.json, part files) are readable as the umask allows, not
    private like mkstemp's files, and a failed write leaves neither the file nor its temporary file."""
    import os

    def fails(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "results.json", {"ok": True})
        open(tmp_path / "plain.txt", "w").close()
        assert (tmp_path / "results.json").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
        with pytest.raises(RuntimeError):
            write_atomic(tmp_path / "broken.json", fails)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "results.json"]
    finally:
        os.umask(umask)
