"""The COCO RLE codec (pam_core.rle): exact round trips, and every cut, over-long or corrupt RLE refused."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pam_core.errors import PromptError
from pam_core.evaluation import CONVERTERS, EvalError, load_annotations
from pam_core.rle import mask_to_rle, rle_counts, rle_to_mask, to_compressed


def _masks():
    rng = np.random.default_rng(0)
    yield np.zeros((7, 5), dtype=bool)
    yield np.ones((7, 5), dtype=bool)  # starts with foreground: a leading empty background run
    for _ in range(20):
        height, width = rng.integers(1, 40, 2)
        yield rng.random((height, width)) < rng.random()
    big = np.zeros((600, 900), dtype=bool)
    big[10:590, 5:880] = True  # runs long enough for multi-character values and differences
    yield big


def _compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


@pytest.mark.parametrize("mask", list(_masks()), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}")
def test_every_form_round_trips_as_pycocotools_decodes_it(mask):
    uncompressed, compressed = mask_to_rle(mask), _compressed(mask)
    assert np.array_equal(rle_to_mask(uncompressed), mask)
    assert np.array_equal(rle_to_mask(compressed), mask)
    assert np.array_equal(rle_to_mask({**compressed, "counts": compressed["counts"].encode()}), mask)
    assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(uncompressed, *mask.shape)), mask)
    assert rle_counts(compressed)[2].tolist() == uncompressed["counts"]
    assert to_compressed(uncompressed, *mask.shape) == compressed == to_compressed(compressed, *mask.shape)


def test_the_video_module_keeps_the_codec_names():
    from pam_core import rle, video

    assert video.mask_to_rle is rle.mask_to_rle and video.rle_to_mask is rle.rle_to_mask


SQUARE = np.zeros((4, 5), dtype=bool)
SQUARE[1:3, 1:4] = True
GOOD = _compressed(SQUARE)  # runs [5, 2, 2, 2, 2, 2, 5]


@pytest.mark.parametrize("rle, message", [
    ({"size": [4, 5], "counts": [5, 2, 2, 2, 2, 2]}, "cover 15 pixels but its size 4x5 has 20"),  # truncated
    ({"size": [4, 5], "counts": [5, 2, 2, 2, 2, 2, 5, 3]}, "cover 23 pixels"),  # over-long
    ({"size": [4, 5], "counts": [5, -2, 2, 2, 2, 2, 9]}, "from 0 to 4294967295"),  # negative
    ({"size": [4, 5], "counts": [2**40, 2]}, "from 0 to 4294967295"),
    ({"size": [4, 5], "counts": [5.0, 15]}, "a list of integers"),
    ({"size": [4, 5], "counts": [True, 19]}, "a list of integers"),
    ({"size": [4, 5], "counts": GOOD["counts"][:-1]}, "cover 15 pixels"),  # a compressed string cut short
    ({"size": [4, 5], "counts": GOOD["counts"] + "5"}, "cover 27 pixels"),  # one more run: 2 + 5
    ({"size": [4, 5], "counts": "~~~"}, "only hold the characters '0' to 'o'"),
    ({"size": [4, 5], "counts": "é"}, "must be ASCII"),
    ({"size": [4, 5], "counts": "5b"}, "cut off in the middle of a value"),  # 'b' has the "more" bit
    ({"size": [4, 5], "counts": "bbbbbbbb5"}, "longer than 7 characters"),
    ({"size": [4, 5], "counts": "5222M"}, "from 0 to 4294967295"),  # 'M' is -3: the fifth run 2 - 3 < 0
    ({"size": [4, 5], "counts": "O"}, "from 0 to 4294967295"),  # 'O' is -1
    ({"size": [0, 5], "counts": []}, "two positive integers"),
    ({"size": [4], "counts": [4]}, "two positive integers"),
    ({"size": ["4", "5"], "counts": [20]}, "two positive integers"),
    ({"size": [4, 5]}, "'size' [height, width] and 'counts'"),
    ({"size": [4, 5], "counts": {"a": 1}}, "a list of integers or a COCO compressed string"),
    ([5, 15], "must be an object"),
])
def test_a_bad_rle_is_refused_with_the_reason(rle, message):
    with pytest.raises(PromptError, match=message.replace("(", r"\(").replace("[", r"\[")):
        rle_to_mask(rle)


@pytest.mark.parametrize("polygons, message", [
    ([[1, 1, 4, 1, 4]], "even count of at least 6"),
    ([[1, 1, 4, 1]], "even count of at least 6"),
    ([[1, 1, 4, 1, 4, float("nan")]], "not finite"),
    ([[1, 1, 4, 1, 4, float("inf")]], "not finite"),
    ([[1, 1, 4, 1, 4, 1e12]], "far outside the 5x4 image"),
    ([[1, 1, 4, 1, "4", 3]], "flat list of numbers"),
    ([1, 1, 4, 1, 4, 3], "flat list of numbers"),
    ([], "at least one polygon"),
])
def test_a_bad_polygon_is_refused_with_the_reason(polygons, message):
    with pytest.raises(PromptError, match=message):
        to_compressed(polygons, 4, 5)


def test_a_polygon_slightly_outside_the_image_is_clipped():
    mask = rle_to_mask(to_compressed([[-2.0, -2.0, 7.5, -2.0, 7.5, 6.5, -2.0, 6.5]], 4, 5))
    assert mask.all()


def test_to_compressed_refuses_an_rle_of_another_size():
    with pytest.raises(PromptError, match="size 4x5 is not the image's 5x4"):
        to_compressed(GOOD, 5, 4)


@pytest.mark.parametrize("counts", [[5, 2, 2, 2, 2, 2], GOOD["counts"][:-1], "\x7fgarbage", [5, -2, 2, 2, 2, 2, 9]])
def test_an_annotation_with_a_bad_rle_names_its_line_and_id(tmp_path, counts):
    path = tmp_path / "bad.jsonl"
    rows = [{"id": "ok", "image": "a.png", "refs": ["x"], "region": {"mask": GOOD}},
            {"id": "m", "image": "a.png", "refs": ["x"], "region": {"mask": {"size": [4, 5], "counts": counts}}}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(EvalError, match=r"line 2 \(id m\): the mask is not a valid COCO RLE"):
        load_annotations(path)


def test_a_converted_segmentation_is_checked_and_named(tmp_path):
    source = tmp_path / "lvis_val_1k_category.json"
    source.write_text(json.dumps([{
        "file_name": "val2017/000000000139.jpg", "height": 4, "width": 5, "categories": ["bus", "car"],
        "annotations": [{"segmentation": GOOD}, {"segmentation": [[1, 1, 4, 1, 4]]}]}]), encoding="utf-8")
    with pytest.raises(EvalError, match=r"image 0 \(val2017/000000000139.jpg\) annotation 1: .* at least 6"):
        list(CONVERTERS["osprey"](source))
    source.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 5}],
        "annotations": [{"id": 12, "image_id": 1, "bbox": [0, 0, 2, 2], "caption": "a lamp",
                         "segmentation": {"size": [4, 5], "counts": [5, 2, 2]}}]}), encoding="utf-8")
    with pytest.raises(EvalError, match="annotation 12: .* cover 9 pixels"):
        list(CONVERTERS["coco-captions"](source, use_masks=True))
