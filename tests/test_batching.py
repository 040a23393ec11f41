"""Many regions and tasks per call give exactly what one call per region and task gives; the feature
cache skips the encoder and stays bounded; describe-everything finds and describes regions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import FIXTURE, needs_fixture
from pam_core import PAM, AutoMaskSettings, GenerationSettings, Region, SettingsError, TaskError
from pam_core.automask import find_objects

pytestmark = needs_fixture
IMAGE = FIXTURE / "inputs" / "image.png"
# repetition_penalty=None applies the checkpoint's 1.05, so the logits processors are exercised too
SETTINGS = GenerationSettings(max_new_tokens=10)
# different prompt lengths, so task texts are padded between the shared prefix and the task
TASKS = ["category", "detailed", "What is unusual about this object?"]
# the everything thresholds are SAM 2's defaults for trained weights; random weights need them open
OPEN = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_side=4, min_area=0.0, box_nms_thresh=0.99)


def _mask(y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros((480, 640), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


REGIONS = [
    Region.from_box([70, 110, 270, 340]),
    Region.from_points([[470, 150], [430, 200], [150, 220]], [1, 1, 0]),
    Region.from_box([300, 50, 600, 400]),
    Region.from_mask(_mask(100, 200, 300, 420)),
    Region.from_points([[320, 240]]),
    Region.from_mask(_mask(250, 400, 50, 200)),
    Region.from_box([10, 10, 200, 150]),
]


@pytest.fixture(scope="module")
def together(pam):
    """Every region and task in one call, all sequences in one decoding batch."""
    return PAM(pam.model, max_batch=64).describe(IMAGE, REGIONS, task=TASKS, generation=SETTINGS)


@pytest.fixture(scope="module")
def alone(pam):
    """[task][region]: one call per region and task, nothing batched (the reference's way)."""
    single = PAM(pam.model, max_batch=1, cache_size=0)
    return [[single.describe(IMAGE, [region], task=task, generation=SETTINGS)[0] for region in REGIONS]
            for task in TASKS]


def test_batched_results_equal_one_call_per_region_and_task(together, alone):
    assert [r.prompt for r in together] == ["box", "points", "box", "mask", "points", "mask", "box"]
    assert len({r.mask.tobytes() for r in together}) == len(REGIONS)  # distinct regions: not a vacuous check
    for region_index, result in enumerate(together):
        assert list(result.texts) == TASKS
        for task_index, task in enumerate(TASKS):
            single = alone[task_index][region_index]
            assert np.array_equal(result.mask, single.mask)
            assert result.box == single.box
            assert result.token_ids[task] == single.token_ids[task] and len(single.token_ids[task]) > 0
            assert result.texts[task] == single.text
            assert result.mask_score == pytest.approx(single.mask_score, rel=1e-5, abs=1e-6)
            assert result.object_score == pytest.approx(single.object_score, rel=1e-5, abs=1e-6)


def test_several_tasks_fill_the_parsed_fields_and_json(together):
    result = together[0]
    assert result.task == "category" and result.text == result.texts["category"]
    assert result.fields == {"label": result.texts["category"].rstrip(".。")}
    record = result.to_dict()
    assert record["texts"] == result.texts and record["task"] == "category"
    assert record["label"] == result.fields["label"]


def test_small_batches_give_the_same_results(pam, together):
    # max_batch 2 with 3 tasks: one region at a time; with 1 task: regions in pairs
    chunked = PAM(pam.model, max_batch=2).describe(IMAGE, REGIONS, task=TASKS, generation=SETTINGS)
    assert [r.token_ids for r in chunked] == [r.token_ids for r in together]
    pairs = PAM(pam.model, max_batch=2).describe(IMAGE, REGIONS, task="detailed", generation=SETTINGS)
    assert [r.token_ids["detailed"] for r in pairs] == [r.token_ids["detailed"] for r in together]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(pairs, together))


def test_progress_reports_each_batch(pam):
    calls = []
    PAM(pam.model, max_batch=3).describe(IMAGE, REGIONS, task="category",
                                         generation=GenerationSettings(max_new_tokens=2),
                                         progress=lambda i, n, msg: calls.append((i, n, msg)))
    assert [(i, n) for i, n, _ in calls] == [(0, 7), (3, 7), (6, 7), (7, 7)]
    assert calls[1][2] == "regions 4-6 of 7"


def test_seeded_sampling_in_a_batch_is_reproducible(pam):
    sampling = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, seed=7)
    engine = PAM(pam.model)
    first = engine.describe(IMAGE, REGIONS[:3], task=TASKS[:2], generation=sampling)
    torch.manual_seed(1234)  # the global RNG must not matter with a seed
    second = engine.describe(IMAGE, REGIONS[:3], task=TASKS[:2], generation=sampling)
    assert [r.token_ids for r in first] == [r.token_ids for r in second]
    greedy = engine.describe(IMAGE, REGIONS[:3], task=TASKS[:2], generation=GenerationSettings(max_new_tokens=8))
    assert [r.token_ids for r in first] != [r.token_ids for r in greedy]


def test_task_lists_are_checked(pam):
    with pytest.raises(TaskError, match="at least one task"):
        pam.describe(IMAGE, REGIONS[:1], task=[])
    with pytest.raises(TaskError, match="repeated"):
        pam.describe(IMAGE, REGIONS[:1], task=["category", "category"])
    with pytest.raises(TaskError, match="unknown task"):
        pam.describe(IMAGE, REGIONS[:1], task=["category", "colour"])
    with pytest.raises(SettingsError, match="max_batch"):
        PAM(pam.model, max_batch=0)


# ---------------------------------------------------------------- feature cache

def _counting(engine: PAM) -> list:
    """Record the encoder calls of `engine` (the real encoder still runs)."""
    calls = []
    encode = engine.model.segmenter.encode

    def counted(image):
        calls.append(image.size)
        return encode(image)

    engine.model.segmenter.encode = counted
    return calls


@pytest.fixture
def cached(pam):
    engine = PAM(pam.model, cache_size=2)
    calls = _counting(engine)
    yield engine, calls
    del engine.model.segmenter.encode  # back to the class's method for the other tests


def test_repeated_calls_on_the_same_image_skip_the_encoder(cached, together):
    engine, calls = cached
    first = engine.describe(IMAGE, REGIONS[:2], task="category", generation=SETTINGS)
    again = engine.describe(np.asarray(Image.open(IMAGE)), REGIONS[:2], task="detailed", generation=SETTINGS)
    assert calls == [(640, 480)]  # same pixels from another source: one encoder pass
    assert [r.token_ids["category"] for r in first] == [r.token_ids["category"] for r in together[:2]]
    assert [r.token_ids["detailed"] for r in again] == [r.token_ids["detailed"] for r in together[:2]]


def test_the_cache_is_bounded_and_evicts_the_oldest(cached):
    engine, calls = cached
    base = np.asarray(Image.open(IMAGE))
    images = [base, base[:, ::-1].copy(), base[::-1].copy()]
    for image in images:
        engine.encode(image)
    assert len(engine.cache) == 2 and len(calls) == 3
    engine.encode(images[2])  # newest: cached
    engine.encode(images[1])
    assert len(calls) == 3
    engine.encode(images[0])  # evicted first
    assert len(calls) == 4 and len(engine.cache) == 2


def test_a_zero_size_cache_never_holds_features(pam):
    engine = PAM(pam.model, cache_size=0)
    calls = _counting(engine)
    try:
        engine.encode(IMAGE)
        engine.encode(IMAGE)
    finally:
        del engine.model.segmenter.encode
    assert len(calls) == 2 and len(engine.cache) == 0
    with pytest.raises(SettingsError, match="cache size"):
        PAM(pam.model, cache_size=-1)


# ---------------------------------------------------------------- describe everything

def test_describe_everything_describes_each_found_object_like_its_box(pam):
    auto = AutoMaskSettings(max_regions=3, **OPEN)
    results = pam.describe_everything(IMAGE, task=["category", "brief"], generation=SETTINGS, auto=auto)
    _, features = pam.encode(IMAGE)
    candidates = find_objects(pam.model.segmenter, features, auto)
    assert len(results) == len(candidates) == 3
    assert [c.area for c in candidates] == sorted((c.area for c in candidates), reverse=True)
    boxes = [Region.from_box(c.box) for c in candidates]
    assert len({c.box for c in candidates}) == 3
    same = pam.describe(IMAGE, boxes, task=["category", "brief"], generation=SETTINGS)
    for auto_result, box_result in zip(results, same):
        assert auto_result.prompt == "auto"
        assert np.array_equal(auto_result.mask, box_result.mask)
        assert auto_result.token_ids == box_result.token_ids
    for c in candidates:
        x0, y0, x1, y1 = c.box
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


def test_describe_everything_orders_by_score_and_applies_thresholds(pam):
    _, features = pam.encode(IMAGE)
    by_score = find_objects(pam.model.segmenter, features, AutoMaskSettings(max_regions=50, order="score", **OPEN))
    assert len(by_score) > 3
    assert [c.score for c in by_score] == sorted((c.score for c in by_score), reverse=True)
    strict = dict(OPEN, pred_iou_thresh=float(np.median([c.score for c in by_score])))
    kept = find_objects(pam.model.segmenter, features, AutoMaskSettings(max_regions=50, order="score", **strict))
    assert 0 < len(kept) < len(by_score) and all(c.score > strict["pred_iou_thresh"] for c in kept)
    nothing = find_objects(pam.model.segmenter, features, AutoMaskSettings(**dict(OPEN, min_area=1.0)))
    assert nothing == [] and pam.describe_everything(IMAGE, auto=AutoMaskSettings(**dict(OPEN, min_area=1.0))) == []


@pytest.mark.parametrize("bad, message", [
    (dict(max_regions=0), "max_regions"), (dict(pred_iou_thresh=1.5), "pred_iou_thresh"),
    (dict(order="random"), "order"), (dict(points_per_side=0), "points_per_side"),
])
def test_auto_mask_settings_are_checked(bad, message):
    with pytest.raises(SettingsError, match=message):
        AutoMaskSettings(**bad)


CLI_MODEL = ["--model", FIXTURE / "checkpoint", "--sam2", FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt",
             "--local-files-only", "--max-new-tokens", "6"]
CLI_OPEN = [arg for name, value in OPEN.items() for arg in (f"--{name.replace('_', '-')}", value)]


@pytest.mark.slow
def test_cli_everything_with_two_tasks(pam_cli, tmp_path):
    proc = pam_cli("describe", IMAGE, *CLI_MODEL, "--everything", "--max-regions", "3", *CLI_OPEN,
                   "--task", "category", "--task", "brief", "--out", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    records = json.loads((tmp_path / "results.json").read_text())
    assert json.loads(proc.stdout) == records
    assert len(records) == 3 and all(r["prompt"] == "auto" and set(r["texts"]) == {"category", "brief"}
                                     for r in records)
    assert len(list(tmp_path.glob("mask_*.png"))) == len(records)


def test_cli_everything_thresholds_reach_the_automatic_masks(pam, pam_cli, tmp_path):
    """SAM 2's default thresholds find nothing with the fixture's random weights; the options open them, and the
    regions are those of the API with the same AutoMaskSettings."""
    strict = pam_cli("describe", IMAGE, *CLI_MODEL, "--everything", "--points-per-side", "4", "--out", tmp_path / "a")
    assert strict.returncode == 0, strict.stderr
    assert json.loads((tmp_path / "a" / "results.json").read_text()) == []

    proc = pam_cli("describe", IMAGE, *CLI_MODEL, "--everything", *CLI_OPEN, "--max-regions", "4", "--order", "score",
                   "--out", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    records = json.loads((tmp_path / "b" / "results.json").read_text())
    api = pam.describe_everything(IMAGE, generation=GenerationSettings(max_new_tokens=6),
                                  auto=AutoMaskSettings(max_regions=4, order="score", **OPEN))
    assert 0 < len(records) == len(api) and [r["box"] for r in records] == [list(r.box) for r in api]
    assert [r["text"] for r in records] == [r.text for r in api]


@pytest.mark.parametrize("args, message", [
    (("--everything", "--box", "1,2,30,40"), "drop --box"),
    ((), "--everything or --find"),
    (("--box", "1,2,30,40", "--task", "brief", "--task", "brief"), "repeated"),
    (("--box", "1,2,30,40", "--max-batch", "0"), "--max-batch"),
    (("--everything", "--max-regions", "0"), "max_regions"),
    (("--everything", "--pred-iou-thresh", "1.5"), "pred_iou_thresh must be between 0 and 1, got 1.5"),
    (("--everything", "--stability-score-thresh", "-0.1"), "stability_score_thresh"),
    (("--everything", "--box-nms-thresh", "2"), "box_nms_thresh"),
    (("--everything", "--min-area", "1.5"), "min_area"),
])
def test_cli_rejects_bad_batching_and_everything_options(pam_cli, tmp_path, args, message):
    line = pam_cli.error("describe", IMAGE, *CLI_MODEL, *args, "--out", tmp_path)
    assert message in line
    assert not (tmp_path / "results.json").exists()
