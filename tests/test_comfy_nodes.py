"""The ComfyUI node pack against a real ComfyUI 0.3.75 (from scripts/test-setup/comfyui.sh):
(a) the pack loads and graphs, the example workflows included, run in ComfyUI's engine in a child process
with the fixture checkpoint in models/pam; outputs equal pam_core's for the same input;
(b) the HTTP server: POST /prompt, websocket progress / success / interruption, output files;
(c) headless Chromium: the points/box editor gets clicks and its value reaches graphToPrompt(), on the
frontend ComfyUI 0.3.75 ships and on the latest comfyui-frontend-package.
The prompt-parsing and region tests at the top need no ComfyUI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_env import (
    ARTIFACTS,
    CHECKPOINT_NAME,
    COMFY_DIR,
    EXAMPLE_IMAGE,
    EXAMPLE_VIDEO,
    EXAMPLES,
    EXTRA_CHECKPOINT_NAME,
    FIXTURE_AUTOMASK,
    LATEST_FRONTEND,
    LONG_VIDEO,
    NODE_MODULES,
    SAM2_NAME,
    VIDEO_FRAMES,
    comfy_server,
    get_json,
    load_example,
    make_base,
    needs_comfyui,
    use_fixture_model,
    workflow_to_prompt,
)
from PIL import Image

from comfy_nodes.prompts import Prompts, mask_regions, parse_boxes, parse_concepts, parse_editor, parse_points
from comfy_nodes.regions import PAMRegions
from helpers import FIXTURE
from pam_core import AutoMaskSettings, ConceptFinder, GenerationSettings, PromptError, Region
from pam_core.prompts import mask_box
from pam_core.video import ObjectFrame, Segment, SegmentCaption, VideoInfo, VideoResult, mask_to_rle

TOKENS = 16  # text length in the graph tests: the fixture model writes gibberish, short keeps them fast
VIDEO_TOKENS = 4  # shorter still for PAM Video's several captions
BOX = [70, 110, 270, 340]
POINT = [460, 150]
PROMPT = json.dumps({"positive": [{"x": POINT[0], "y": POINT[1]}], "negative": [], "boxes": [BOX]})
HUB_MODELS = ["Perceive-Anything/PAM-1.5B", "Perceive-Anything/PAM-3B"]
PAM_NODES = ["PAMDescribeEverything", "PAMDescribeMasks", "PAMFindDescribe", "PAMModelLoader", "PAMOverlay",
             "PAMRegionsToText", "PAMSegmentDescribe", "PAMVideo"]
EXAMPLE_WORKFLOWS = ["click_to_caption", "describe_everything", "video_caption"]
VIDEO_BOX = [30, 50, 110, 130]  # the red square on the fixture video's first frames (320x240)
VIDEO_POINT = [260, 180]  # the green disc
SAM3_NAME = "sam3_tiny"  # pam_core.synthetic's random SAM 3, linked into models/sam3
CONCEPTS = ["object", "red shape"]


# --- prompt inputs (no ComfyUI needed) ---------------------------------------------------------------------

def test_editor_prompt_becomes_one_region_per_box_and_one_for_the_points():
    prompts = parse_editor('{"positive": [{"x": 5, "y": 6}, [7, 8]], "negative": [{"x": 1, "y": 2}], '
                           '"boxes": [[0, 0, 10, 10], [2, 2, 4, 4]]}')
    regions = prompts.regions()
    assert [r.kind for r in regions] == ["box", "box", "points"]
    assert regions[2].points == ((5.0, 6.0), (7.0, 8.0), (1.0, 2.0)) and regions[2].labels == (1, 1, 0)
    each = prompts.regions(each_point_is_a_region=True)
    assert [r.points for r in each[2:]] == [((5.0, 6.0), (1.0, 2.0)), ((7.0, 8.0), (1.0, 2.0))]
    assert parse_editor("") == Prompts() and parse_editor("  ").regions() == []


def test_kjnodes_points_and_bbox_inputs():
    assert parse_editor('[{"x": 3, "y": 4}]').positive == [(3.0, 4.0)]  # a KJNodes list pasted into the editor
    assert parse_points('[{"x":10,"y":20},{"x":30.5,"y":40}]') == [(10.0, 20.0), (30.5, 40.0)]
    assert parse_points(None) == []
    assert parse_boxes([[1, 2, 3, 4]]) == [(1.0, 2.0, 3.0, 4.0)]
    assert parse_boxes([[[1, 2, 3, 4], [5, 6, 7, 8]]]) == [(1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)]
    assert parse_boxes((1, 2, 3, 4)) == [(1.0, 2.0, 3.0, 4.0)]
    assert parse_boxes([]) == [] and parse_boxes(None) == []


@pytest.mark.parametrize("text, message", [
    ('{"positive": [{"x": 1}]}', "a point must be"),
    ('{"positive": [', "not valid JSON"),
    ('{"points": []}', "unknown keys"),
    ('"hello"', "JSON object"),
])
def test_bad_editor_prompts_are_named(text, message):
    with pytest.raises(PromptError, match=message):
        parse_editor(text)


def test_bad_point_and_box_inputs_are_named():
    with pytest.raises(PromptError, match="positive_points must be a JSON list"):
        parse_points('{"x": 1, "y": 2}', "positive_points")
    with pytest.raises(PromptError, match=r"\[x0, y0, x1, y1\]"):
        parse_boxes([[1, 2, 3]])


def test_masks_are_resized_to_the_image():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1
    [resized] = [region.mask for region in mask_regions(mask, 8, 8)]
    assert resized.shape == (8, 8) and resized.dtype == bool and resized[:4, :4].all() and resized.sum() == 16
    [same] = mask_regions(mask[0], 4, 4)  # [H, W] is accepted too
    assert same.kind == "mask" and same.mask.sum() == 4


def test_concepts_text_box():
    assert parse_concepts("person\n red car, dog ,\n\n") == ["person", "red car", "dog"]
    assert parse_concepts("") == [] and parse_concepts(" ,\n ") == []


def test_video_tracks_become_regions_per_frame_with_their_segment_caption():
    def tracked(obj, frame, mask):
        return ObjectFrame(obj, frame, None, 1.0, 0.9, mask_box(mask), mask_to_rle(mask))

    left, right = np.zeros((4, 6), dtype=bool), np.zeros((4, 6), dtype=bool)
    left[1:3, 0:3], right[1:3, 2:5] = True, True
    # memory carry: object 0 is tracked on frame 2 too, outside the only segment (no caption there)
    result = VideoResult(VideoInfo(3, 6, 4, None), [Segment(0, 1)],
                         [SegmentCaption(0, 0, 1, None, None, [0] * 16, "box", "video_caption", "en", "a cat\nsits"),
                          SegmentCaption(1, 1, 1, None, None, [1] * 16, "points", "video_caption", "en", "a dog")],
                         [tracked(0, 0, left), tracked(0, 1, left), tracked(1, 1, right), tracked(0, 2, right)])
    regions = PAMRegions.from_video(result, ["box", "points"], "video_caption", "en")
    assert [[(r.index, r.prompt, r.text) for r in frame] for frame in regions.per_image] == [
        [(0, "box", "a cat\nsits")], [(0, "box", "a cat\nsits"), (1, "points", "a dog")], [(0, "box", "")]]
    assert regions.lines() == ["a cat sits", "a cat sits", "a dog", ""]
    union = regions.union_masks()
    assert union.shape == (3, 4, 6) and union.dtype == torch.float32
    np.testing.assert_array_equal(union.numpy() > 0.5, [left, left | right, right])
    assert regions.to_json()[2] == {"image": 1, "index": 1, "prompt": "points", "box": [2, 1, 5, 3], "mask_area": 6,
                                    "mask_score": 0.9, "object_score": 1.0, "task": "video_caption", "lang": "en",
                                    "text": "a dog", "texts": {"video_caption": "a dog"}}


# --- (a) real ComfyUI engine, in a child process -----------------------------------------------------------

def api_prompt(**nodes) -> dict:
    return {node_id: {"class_type": class_type, "inputs": inputs} for node_id, (class_type, inputs) in nodes.items()}


LOADER = ("PAMModelLoader", {"model": "pam_tiny", "sam2": "sam2.1_hiera_pamtiny.pt", "device": "auto",
                             "dtype": "auto", "keep_loaded": False, "download_from_hub": False})
TEXT = {"lang": "en", "instruction": "", "max_new_tokens": TOKENS}
VIDEO_SOURCE = {"1": ("LoadVideo", {"file": EXAMPLE_VIDEO}), "2": ("GetVideoComponents", {"video": ["1", 0]}),
                "3": LOADER}
VIDEO = {"pam_model": ["3", 0], "frames": ["2", 0], "fps": ["2", 2], "frame": 0, "task": "caption", **TEXT,
         "max_new_tokens": VIDEO_TOKENS, "prompt": json.dumps({"boxes": [VIDEO_BOX]})}

JOBS = {
    "max_new_tokens": TOKENS,
    "workflows": {name: load_example(name) for name in EXAMPLE_WORKFLOWS},
    "prompts": {
        # a batch of two images: the same prompts on each, masks saved as PNGs, and the masks described again
        "batch_and_masks": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}), "2": LOADER,
               "3": ("RepeatImageBatch", {"image": ["1", 0], "amount": 2}),
               "4": ("PAMSegmentDescribe", {"pam_model": ["2", 0], "image": ["3", 0], "prompt": PROMPT,
                                            "task": "category", **TEXT}),
               "5": ("MaskToImage", {"mask": ["4", 0]}),
               "6": ("SaveImage", {"images": ["5", 0], "filename_prefix": "batch_masks"}),
               "7": ("PAMDescribeMasks", {"pam_model": ["2", 0], "image": ["1", 0], "mask": ["4", 0],
                                          "task": "definition", **TEXT}),
               "8": ("PAMRegionsToText", {"regions": ["7", 2]}),
               "9": ("PreviewAny", {"source": ["8", 1]})}),
        # batches of two through the streaming engine: everything found on each image, SAM 3's instances on each
        "batch_everything": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}), "2": LOADER,
               "3": ("RepeatImageBatch", {"image": ["1", 0], "amount": 2}),
               "4": ("PAMDescribeEverything", {"pam_model": ["2", 0], "image": ["3", 0], "task": "category", **TEXT,
                                               **FIXTURE_AUTOMASK})}),
        "batch_find": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}), "2": LOADER,
               "3": ("RepeatImageBatch", {"image": ["1", 0], "amount": 2}),
               "4": ("PAMFindDescribe", {"pam_model": ["2", 0], "image": ["3", 0], "concepts": "object, red shape",
                                         "sam3": SAM3_NAME, "threshold": 0.0, "max_instances": 2, "task": "category",
                                         **TEXT})}),
        # mask i belongs to image i, and the second mask is empty (a full and an empty SolidMask, batched)
        "batch_empty_mask": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}), "2": LOADER,
               "3": ("RepeatImageBatch", {"image": ["1", 0], "amount": 2}),
               "4": ("SolidMask", {"value": 1.0, "width": 640, "height": 480}),
               "5": ("SolidMask", {"value": 0.0, "width": 640, "height": 480}),
               "6": ("MaskToImage", {"mask": ["4", 0]}), "7": ("MaskToImage", {"mask": ["5", 0]}),
               "8": ("ImageBatch", {"image1": ["6", 0], "image2": ["7", 0]}),
               "9": ("ImageToMask", {"image": ["8", 0], "channel": "red"}),
               "10": ("PAMDescribeMasks", {"pam_model": ["2", 0], "image": ["3", 0], "mask": ["9", 0],
                                           "task": "category", **TEXT})}),
        # a KJNodes-style points string, a custom instruction in Chinese, the checkpoint from extra_model_paths.yaml
        "custom_instruction": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}),
               "2": ("PAMModelLoader", {**LOADER[1], "model": EXTRA_CHECKPOINT_NAME}),
               "3": ("PrimitiveString", {"value": json.dumps([{"x": POINT[0], "y": POINT[1]}])}),
               "4": ("PAMSegmentDescribe", {"pam_model": ["2", 0], "image": ["1", 0], "prompt": "",
                                            "positive_points": ["3", 0], "task": "custom instruction",
                                            **TEXT, "lang": "zh", "instruction": "What is this thing used for?"})}),
        # two objects (a box on frame 1, tracked back to frame 0, and a KJNodes point string), two segments,
        # an image task; the per-frame masks saved as PNGs, the per-object regions as JSON
        "video_two_objects": api_prompt(**VIDEO_SOURCE, **{
            "4": ("PrimitiveString", {"value": json.dumps([{"x": VIDEO_POINT[0], "y": VIDEO_POINT[1]}])}),
            "5": ("PAMVideo", {**VIDEO, "frame": 1, "task": "category", "segments": "0-2, 3-4",
                               "positive_points": ["4", 0]}),
            "6": ("MaskToImage", {"mask": ["5", 0]}),
            "7": ("SaveImage", {"images": ["6", 0], "filename_prefix": "video_masks"}),
            "8": ("PAMRegionsToText", {"regions": ["5", 2]}),
            "9": ("PreviewAny", {"source": ["8", 1]})}),
        "video_no_prompt": api_prompt(**VIDEO_SOURCE, **{"5": ("PAMVideo", {**VIDEO, "prompt": ""})}),
        "video_frame_outside": api_prompt(**VIDEO_SOURCE, **{"5": ("PAMVideo", {**VIDEO, "frame": VIDEO_FRAMES})}),
        "video_bad_segments": api_prompt(**VIDEO_SOURCE, **{"5": ("PAMVideo", {**VIDEO, "segments": "0:2"})}),
        # concepts found by SAM 3 (a random one: threshold 0 keeps max_instances of each), described, as JSON
        "find_describe": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}), "2": LOADER,
               "3": ("PAMFindDescribe", {"pam_model": ["2", 0], "image": ["1", 0], "concepts": "object, red shape",
                                         "sam3": SAM3_NAME, "threshold": 0.0, "max_instances": 2, "task": "category",
                                         **TEXT}),
               "4": ("PAMRegionsToText", {"regions": ["3", 2]}),
               "5": ("PreviewAny", {"source": ["4", 1]}),
               "6": ("MaskToImage", {"mask": ["3", 0]}),
               "7": ("SaveImage", {"images": ["6", 0], "filename_prefix": "find_masks"})}),
        "find_nothing": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}), "2": LOADER,
               "3": ("PAMFindDescribe", {"pam_model": ["2", 0], "image": ["1", 0], "concepts": "object",
                                         "sam3": SAM3_NAME, "threshold": 1.0, "max_instances": 2, "task": "category",
                                         **TEXT}),
               "4": ("PAMRegionsToText", {"regions": ["3", 2]})}),
        "find_no_concept": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}), "2": LOADER,
               "3": ("PAMFindDescribe", {"pam_model": ["2", 0], "image": ["1", 0], "concepts": " ,\n",
                                         "sam3": SAM3_NAME, "threshold": 0.5, "max_instances": 2, "task": "category",
                                         **TEXT})}),
        "find_sam3_missing": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}), "2": LOADER,
               "3": ("PAMFindDescribe", {"pam_model": ["2", 0], "image": ["1", 0], "concepts": "person",
                                         "sam3": "facebook/sam3", "threshold": 0.5, "max_instances": 2,
                                         "task": "category", **TEXT})}),
        "unknown_more_task": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}), "2": LOADER,
               "3": ("PAMSegmentDescribe", {"pam_model": ["2", 0], "image": ["1", 0], "prompt": PROMPT,
                                            "task": "brief", **TEXT, "more_tasks": "category, sorting"})}),
        "no_prompt": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}), "2": LOADER,
               "3": ("PAMSegmentDescribe", {"pam_model": ["2", 0], "image": ["1", 0], "prompt": "",
                                            "task": "brief", **TEXT})}),
        "download_while_offline": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}),
               "2": ("PAMModelLoader", {**LOADER[1], "model": "Perceive-Anything/PAM-3B", "download_from_hub": True}),
               "3": ("PAMSegmentDescribe", {"pam_model": ["2", 0], "image": ["1", 0], "prompt": PROMPT,
                                            "task": "brief", **TEXT})}),
        "weights_missing": api_prompt(
            **{"1": ("LoadImage", {"image": EXAMPLE_IMAGE}),
               "2": ("PAMModelLoader", {**LOADER[1], "model": "Perceive-Anything/PAM-3B"}),
               "3": ("PAMSegmentDescribe", {"pam_model": ["2", 0], "image": ["1", 0], "prompt": PROMPT,
                                            "task": "brief", **TEXT})}),
    },
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory, synthetic_sam3):
    """Every job of JOBS run by ComfyUI's PromptExecutor: (results by job name, base directory)."""
    base = make_base(tmp_path_factory.mktemp("comfy-inprocess"))
    (base / "models" / "sam3").mkdir()
    (base / "models" / "sam3" / SAM3_NAME).symlink_to(synthetic_sam3, target_is_directory=True)
    jobs, result = base / "jobs.json", base / "result.json"
    jobs.write_text(json.dumps(JOBS))
    settings = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PAM_MODEL_CACHE_SIZE": "1"}
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("comfy_inprocess.py")), str(COMFY_DIR),
                          str(base), str(jobs), str(result)], capture_output=True, text=True, timeout=1200,
                         env={**os.environ, **settings})
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(result.read_text()), base


def execution_error(entry: dict) -> dict:
    errors = [data for event, data in entry["status"] if event == "execution_error"]
    assert errors, f"expected an execution error, got {entry['status']}"
    return errors[0]


def expected(pam, regions, task, lang="en"):
    return pam.describe(FIXTURE / "inputs" / "image.png", regions, task=task, lang=lang,
                        generation=GenerationSettings(max_new_tokens=TOKENS))


def lines(results) -> list[str]:
    """One caption line per region, as the nodes write them ("task: text | task: text" for several tasks)."""
    def line(r):
        texts = [(task, " ".join(text.split())) for task, text in r.texts.items()]
        return texts[0][1] if len(texts) == 1 else " | ".join(f"{task}: {text}" for task, text in texts)
    return [line(r) for r in results]


def saved_images(base: Path, ui_output: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(base / "output" / item["subfolder"] / item["filename"]))
            for item in ui_output["images"]]


@pytest.mark.host
@needs_comfyui
def test_pack_loads_every_node(engine):
    results, _ = engine
    assert results["loaded_pam_nodes"] == PAM_NODES
    # the loaders load through pam_core.load_pam: of the two checkpoints the jobs use, the cache keeps the last
    assert results["models_in_pam_core_cache"] == 1


@pytest.mark.host
@needs_comfyui
def test_click_to_caption_example_gives_pam_core_texts(engine, pam):
    results, base = engine
    entry = results["click_to_caption"]
    assert entry["valid"] and entry["success"], entry.get("status") or entry["node_errors"]
    want = lines(expected(pam, [Region.from_box(BOX), Region.from_points([POINT])], "brief"))
    assert entry["outputs"]["6"]["text"] == ["\n".join(want)]  # PAM Regions to Text
    assert entry["outputs"]["3"]["text"] == ["\n".join(want)]  # the describe node's own preview
    [overlay] = saved_images(base, entry["outputs"]["5"])
    original = np.asarray(Image.open(FIXTURE / "inputs" / "image.png").convert("RGB"))
    assert overlay.shape == original.shape and (overlay != original).any()


@pytest.mark.host
@needs_comfyui
def test_describe_everything_example_gives_pam_core_regions_with_two_tasks(engine, pam):
    results, base = engine
    entry = results["describe_everything"]
    assert entry["valid"] and entry["success"], entry.get("status") or entry["node_errors"]
    want = pam.describe_everything(FIXTURE / "inputs" / "image.png", task=["category", "brief"],
                                   generation=GenerationSettings(max_new_tokens=TOKENS),
                                   auto=AutoMaskSettings(**FIXTURE_AUTOMASK))
    assert want and all(r.prompt == "auto" for r in want)
    assert entry["outputs"]["6"]["text"] == ["\n".join(lines(want))]
    assert all(line.startswith("category: ") and " | brief: " in line for line in lines(want))
    [overlay] = saved_images(base, entry["outputs"]["5"])
    assert overlay.shape == (480, 640, 3)


@pytest.mark.host
@needs_comfyui
def test_batch_masks_and_describe_masks_match_pam_core(engine, pam):
    results, base = engine
    entry = results["batch_and_masks"]
    assert entry["valid"] and entry["success"], entry.get("status") or entry["node_errors"]
    regions = [Region.from_box(BOX), Region.from_points([POINT])]
    found = expected(pam, regions, "category")
    assert entry["outputs"]["4"]["text"] == ["\n".join(lines(found) * 2)]  # same prompts on both images
    masks = saved_images(base, entry["outputs"]["6"])
    assert len(masks) == 4 and all(m.shape[:2] == (480, 640) for m in masks)
    for saved, result in zip(masks, found * 2):
        np.testing.assert_array_equal(saved[..., 0] > 127, result.mask)
    described = expected(pam, [Region.from_mask(r.mask) for r in found * 2], "definition")
    assert entry["outputs"]["8"]["text"] == ["\n".join(lines(described))]
    [as_json] = entry["outputs"]["9"]["text"]  # the JSON output, shown by a core PreviewAny node
    assert json.loads(as_json) == [{"image": 0, **r.to_dict()} for r in described]


@pytest.mark.host
@needs_comfyui
def test_batches_stream_and_give_each_image_what_pam_core_gives_it(engine, pam, synthetic_sam3):
    """A batch of several images goes through the streaming engine (regions of different images decode together);
    each image gets exactly the per-image result, and a region that does not fit its image names the image."""
    results, _ = engine
    entry = results["batch_everything"]
    assert entry["valid"] and entry["success"], entry.get("status") or entry["node_errors"]
    found = pam.describe_everything(FIXTURE / "inputs" / "image.png", task="category",
                                    generation=GenerationSettings(max_new_tokens=TOKENS),
                                    auto=AutoMaskSettings(**FIXTURE_AUTOMASK))
    assert found and entry["outputs"]["4"]["text"] == ["\n".join(lines(found) * 2)]
    entry = results["batch_find"]
    assert entry["valid"] and entry["success"], entry.get("status") or entry["node_errors"]
    want = pam.find(FIXTURE / "inputs" / "image.png", CONCEPTS, task="category", threshold=0.0, max_instances=2,
                    generation=GenerationSettings(max_new_tokens=TOKENS),
                    sam3=ConceptFinder.from_pretrained(synthetic_sam3))
    assert want and entry["outputs"]["4"]["text"] == [
        "\n".join(f"{r.concept}: {line}" for r, line in zip(want * 2, lines(want) * 2))]
    error = execution_error(results["batch_empty_mask"])
    assert error["node_type"] == "PAMDescribeMasks"
    assert error["exception_message"].startswith("image 2 of the batch: mask is empty"), error["exception_message"]


@pytest.mark.host
@needs_comfyui
def test_kjnodes_points_and_custom_instruction(engine, pam):
    results, _ = engine
    entry = results["custom_instruction"]
    assert entry["valid"] and entry["success"], entry.get("status") or entry["node_errors"]
    want = expected(pam, [Region.from_points([POINT])], "What is this thing used for?", lang="zh")
    assert entry["outputs"]["4"]["text"] == ["\n".join(lines(want))]


@pytest.mark.host
@needs_comfyui
def test_errors_say_what_to_do(engine):
    results, base = engine
    no_prompt = execution_error(results["no_prompt"])
    assert no_prompt["node_type"] == "PAMSegmentDescribe" and "click on the image" in no_prompt["exception_message"]
    missing = execution_error(results["weights_missing"])
    assert missing["node_type"] == "PAMModelLoader"
    message = missing["exception_message"]
    assert "PAM-3B" in message and "HF_HUB_OFFLINE" in message
    assert str(base / "models" / "pam") in message and str(base / "models" / "sam2") in message
    offline = execution_error(results["download_while_offline"])["exception_message"]
    assert "downloads are disabled (HF_HUB_OFFLINE=1" in offline  # the switch never overrides HF_HUB_OFFLINE
    unknown = execution_error(results["unknown_more_task"])
    assert unknown["node_type"] == "PAMSegmentDescribe" and "unknown task 'sorting'" in unknown["exception_message"]


@pytest.mark.host
@needs_comfyui
def test_find_describe_gives_pam_core_find(engine, pam, synthetic_sam3):
    results, base = engine
    entry = results["find_describe"]
    assert entry["valid"] and entry["success"], entry.get("status") or entry["node_errors"]
    want = pam.find(FIXTURE / "inputs" / "image.png", CONCEPTS, task="category", threshold=0.0, max_instances=2,
                    generation=GenerationSettings(max_new_tokens=TOKENS),
                    sam3=ConceptFinder.from_pretrained(synthetic_sam3))
    assert [r.concept for r in want] == [CONCEPTS[0]] * 2 + [CONCEPTS[1]] * 2
    assert entry["outputs"]["3"]["text"] == ["\n".join(f"{r.concept}: {line}" for r, line in zip(want, lines(want)))]
    [as_json] = entry["outputs"]["5"]["text"]
    assert json.loads(as_json) == json.loads(json.dumps([{"image": 0, **r.to_dict()} for r in want]))
    masks = saved_images(base, entry["outputs"]["7"])
    assert len(masks) == 4 and all(np.array_equal(m[..., 0] > 127, r.mask) for m, r in zip(masks, want))
    nothing = results["find_nothing"]
    assert nothing["success"] and nothing["outputs"]["3"]["text"] == [""]
    error = execution_error(results["find_no_concept"])
    assert error["node_type"] == "PAMFindDescribe" and "give at least one concept" in error["exception_message"]
    missing = execution_error(results["find_sam3_missing"])["exception_message"]
    assert "accept the SAM License at https://huggingface.co/facebook/sam3" in missing
    assert str(base / "models" / "sam3") in missing and "never downloads" in missing


def caption_lines(result) -> str:
    """The captions output of PAM Video for a pam_core VideoResult: one line per object and segment."""
    return "\n".join(f"object {c.object}, frames {c.start_frame}-{c.end_frame} "
                     f"({c.start_time:.2f}-{c.end_time:.2f} s): {' '.join(c.text.split())}" for c in result.captions)


def example_video(base: Path) -> Path:
    return base / "input" / EXAMPLE_VIDEO


@pytest.mark.host
@needs_comfyui
def test_video_caption_example_gives_pam_core_captions_and_a_captioned_video(engine, pam):
    import av

    results, base = engine
    entry = results["video_caption"]
    assert entry["valid"] and entry["success"], entry.get("status") or entry["node_errors"]
    want = pam.describe_video(example_video(base), [Region.from_box(VIDEO_BOX)],
                              generation=GenerationSettings(max_new_tokens=TOKENS))
    assert len(want.captions) == 1 and want.captions[0].end_frame == VIDEO_FRAMES - 1
    assert entry["outputs"]["4"]["text"] == [caption_lines(want)]
    assert caption_lines(want).startswith(f"object 0, frames 0-{VIDEO_FRAMES - 1} (0.00-0.50 s): ")
    [saved] = entry["outputs"]["7"]["images"]  # Save Video: the overlay frames as an mp4
    with av.open(str(base / "output" / saved["subfolder"] / saved["filename"])) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == VIDEO_FRAMES and frames[0].shape == (240, 320, 3)


@pytest.mark.host
@needs_comfyui
def test_video_masks_and_regions_match_pam_core(engine, pam):
    results, base = engine
    entry = results["video_two_objects"]
    assert entry["valid"] and entry["success"], entry.get("status") or entry["node_errors"]
    want = pam.describe_video(example_video(base), [Region.from_box(VIDEO_BOX), Region.from_points([VIDEO_POINT])],
                              frame=1, task="category", segments=[(0, 2), (3, 4)],
                              generation=GenerationSettings(max_new_tokens=VIDEO_TOKENS))
    spans = [(c.object, c.start_frame, c.end_frame) for c in want.captions]
    assert spans == [(0, 1, 2), (1, 1, 2), (0, 3, 4), (1, 3, 4)]
    assert entry["outputs"]["5"]["text"] == [caption_lines(want)]
    masks = saved_images(base, entry["outputs"]["7"])  # one mask per frame: the union of both objects
    assert len(masks) == VIDEO_FRAMES and all(m.shape[:2] == (240, 320) for m in masks)
    for index, saved in enumerate(masks):
        np.testing.assert_array_equal(saved[..., 0] > 127, want.masks(0)[index] | want.masks(1)[index])
    assert all(want.masks(0)[i].any() for i in range(VIDEO_FRAMES))  # frame 0 comes from the backward track
    texts = {(c.object, c.start_frame > 2): c.text for c in want.captions}
    kinds = ["box", "points"]
    per_object = [{"image": t.frame, "index": t.object, "prompt": kinds[t.object], "box": list(t.box),
                   "mask_area": int(t.mask.sum()), "mask_score": t.mask_score, "object_score": t.object_score,
                   "task": "category", "lang": "en", "text": texts[t.object, t.frame > 2],
                   "texts": {"category": texts[t.object, t.frame > 2]}}
                  for t in sorted(want.frames, key=lambda t: (t.frame, t.object))]
    [as_json] = entry["outputs"]["9"]["text"]  # PAM Regions to Text / JSON: each object on each frame
    assert json.loads(as_json) == per_object


@pytest.mark.host
@needs_comfyui
@pytest.mark.parametrize("job, message", [
    ("video_no_prompt", "give at least one object prompt (a box, points or a mask)"),
    ("video_frame_outside", f"prompt frame {VIDEO_FRAMES} is not a frame of the video (0-{VIDEO_FRAMES - 1})"),
    ("video_bad_segments", "segment '0:2' must look like START-END"),
])
def test_video_errors_say_what_is_wrong(engine, job, message):
    results, _ = engine
    error = execution_error(results[job])
    assert error["node_type"] == "PAMVideo" and message in error["exception_message"]


# --- (b) the HTTP server --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Starts ComfyUI for a frontend ("bundled" 1.32.9, "latest", or "latest-vue" with the Vue node renderer),
    one server at a time, stopped at the end."""
    running: dict = {}
    stack = contextlib.ExitStack()

    def start(frontend: str) -> tuple[str, Path]:
        if frontend not in running:
            stack.close()
            running.clear()
            base = make_base(tmp_path_factory.mktemp(f"comfy-server-{frontend}"), vue_nodes=frontend.endswith("vue"))
            root = LATEST_FRONTEND if frontend.startswith("latest") else None
            running[frontend] = (stack.enter_context(comfy_server(base, base / "server.log", root)), base)
        return running[frontend]

    with stack:
        yield start
    stack.close()


async def run_on_server(url: str, prompt: dict, interrupt_on_progress: bool = False) -> tuple[str, list[dict]]:
    """POST the prompt with a client id and collect that client's websocket messages until it finishes."""
    import aiohttp

    client = uuid.uuid4().hex
    messages = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws', 1)}/ws?clientId={client}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client}) as response:
                body = await response.json()
                assert response.status == 200, body
            prompt_id = body["prompt_id"]
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                messages.append(data)
                if interrupt_on_progress and data["type"] == "progress":
                    interrupt_on_progress = False
                    async with session.post(f"{url}/interrupt", json={}) as response:
                        assert response.status == 200
                if data["type"] in ("execution_success", "execution_error", "execution_interrupted") \
                        and data["data"].get("prompt_id") == prompt_id:
                    break
    return prompt_id, messages


def server_prompt(url: str, workflow: str) -> dict:
    info = get_json(f"{url}/object_info")
    return use_fixture_model(workflow_to_prompt(load_example(workflow),
                                                lambda kind: info[kind]["input"] if kind in info else None), TOKENS)


@pytest.mark.host
@needs_comfyui
def test_server_runs_click_to_caption(servers):
    url, base = servers("bundled")
    stats = get_json(f"{url}/system_stats")
    assert stats["system"]["comfyui_version"] == "0.3.75"
    assert "/extensions/pam-suite/pam_prompt_editor.js" in get_json(f"{url}/extensions")
    assert sorted(get_json(f"{url}/api/workflow_templates")["pam-suite"]) == EXAMPLE_WORKFLOWS
    loader = get_json(f"{url}/object_info/PAMModelLoader")["PAMModelLoader"]["input"]["required"]
    assert loader["model"][1]["options"] == [EXTRA_CHECKPOINT_NAME, CHECKPOINT_NAME, *HUB_MODELS]  # sorted
    assert loader["sam2"][1]["options"] == [SAM2_NAME, "facebook/sam2.1-hiera-large"]
    prompt = server_prompt(url, "click_to_caption")
    prompt_id, messages = asyncio.run(asyncio.wait_for(run_on_server(url, prompt), 900))
    kinds = [m["type"] for m in messages]
    assert kinds[-1] == "execution_success", messages[-1]
    progress = [m["data"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "3"]
    assert progress and {p["max"] for p in progress} == {2}  # one step per region (box + points)
    executed = {m["data"]["node"]: m["data"]["output"] for m in messages if m["type"] == "executed"}
    assert len(executed["6"]["text"][0].splitlines()) == 2
    [saved] = executed["5"]["images"]
    assert (base / "output" / saved["subfolder"] / saved["filename"]).is_file()
    history = {}
    for _ in range(100):  # the history entry is stored just after the success message
        history = get_json(f"{url}/history/{prompt_id}")
        if history:
            break
        time.sleep(0.1)
    assert history[prompt_id]["status"]["status_str"] == "success"


@pytest.mark.host
@needs_comfyui
def test_server_interrupt_stops_between_regions(servers):
    url, _ = servers("bundled")
    prompt = server_prompt(url, "click_to_caption")
    segment = prompt["3"]["inputs"]
    # 10 regions, 2 at a time: Cancel takes effect between batches of regions
    segment["prompt"] = json.dumps({"positive": [{"x": 60 * i + 40, "y": 150} for i in range(10)]})
    segment["each_point_is_a_region"] = True
    prompt["2"]["inputs"]["max_batch"] = 2
    _, messages = asyncio.run(asyncio.wait_for(run_on_server(url, prompt, interrupt_on_progress=True), 900))
    assert messages[-1]["type"] == "execution_interrupted", messages[-1]
    done = [m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "3"]
    assert max(done) < 10


@pytest.mark.host
@needs_comfyui
def test_server_batch_progress_per_image_and_cancel(servers):
    """A batch streams: the bar counts images, and Cancel stops the engine at its next decoding step."""
    url, _ = servers("bundled")
    prompt = server_prompt(url, "click_to_caption")
    prompt["7"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}}
    prompt["3"]["inputs"]["image"] = prompt["4"]["inputs"]["image"] = ["7", 0]  # PAM Segment & Describe, PAM Overlay
    _, messages = asyncio.run(asyncio.wait_for(run_on_server(url, prompt), 900))
    assert messages[-1]["type"] == "execution_success", messages[-1]
    progress = [(m["data"]["value"], m["data"]["max"]) for m in messages if m["type"] == "progress"
                and m["data"]["node"] == "3"]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    executed = {m["data"]["node"]: m["data"]["output"] for m in messages if m["type"] == "executed"}
    assert len(executed["6"]["text"][0].splitlines()) == 6  # 2 regions on each of the 3 images
    # 8 images, one at a time (its 2 regions are the 2 rows of max_batch): Cancel after the first stops the stream
    prompt["7"]["inputs"]["amount"] = 8
    prompt["2"]["inputs"]["max_batch"] = 2
    _, messages = asyncio.run(asyncio.wait_for(run_on_server(url, prompt, interrupt_on_progress=True), 900))
    assert messages[-1]["type"] == "execution_interrupted", messages[-1]
    done = [m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "3"]
    assert done and max(done) < 8


@pytest.mark.host
@needs_comfyui
def test_server_video_progress_per_frame_and_cancel(servers):
    url, base = servers("bundled")
    prompt = server_prompt(url, "video_caption")
    _, messages = asyncio.run(asyncio.wait_for(run_on_server(url, prompt), 900))
    assert messages[-1]["type"] == "execution_success", messages[-1]
    progress = [(m["data"]["value"], m["data"]["max"]) for m in messages if m["type"] == "progress"
                and m["data"]["node"] == "4"]
    assert progress == [(frame, VIDEO_FRAMES) for frame in range(1, VIDEO_FRAMES + 1)]  # one step per frame
    executed = {m["data"]["node"]: m["data"]["output"] for m in messages if m["type"] == "executed"}
    [saved] = executed["7"]["images"]
    assert (base / "output" / saved["subfolder"] / saved["filename"]).is_file()
    # 20 frames: Cancel after the first one stops the tracking
    prompt["1"]["inputs"]["file"] = LONG_VIDEO
    _, messages = asyncio.run(asyncio.wait_for(run_on_server(url, prompt, interrupt_on_progress=True), 900))
    assert messages[-1]["type"] == "execution_interrupted", messages[-1]
    done = [m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "4"]
    assert done and max(done) < 20


# --- (c) headless Chromium --------------------------------------------------------------------------------

@pytest.mark.host
@needs_comfyui
@pytest.mark.skipif(not (NODE_MODULES / "playwright-core").is_dir(), reason="playwright-core is not installed")
@pytest.mark.parametrize("frontend", ["bundled", "latest", "latest-vue"])
def test_editor_clicks_reach_graph_to_prompt(servers, frontend):
    url, _ = servers(frontend)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    clicks = {"positive": POINT, "negative": [600, 60], "box": BOX}
    run = subprocess.run(["node", str(Path(__file__).with_name("comfy_browser.cjs")), url, json.dumps(clicks),
                          str(EXAMPLES), str(ARTIFACTS), frontend], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((ARTIFACTS / f"browser-{frontend}.json").read_text())
    assert result["image_size"] == "640x480"
    value = json.loads(result["widget_value"])
    assert result["api_prompt_value"] == result["widget_value"] == result["text_box_value"]
    assert result["workflow_widgets_values"][0] == result["widget_value"]
    [positive], [negative], [box] = value["positive"], value["negative"], value["boxes"]
    assert positive["x"] == pytest.approx(POINT[0], abs=1.5) and positive["y"] == pytest.approx(POINT[1], abs=1.5)
    assert negative["x"] == pytest.approx(600, abs=1.5) and negative["y"] == pytest.approx(60, abs=1.5)
    assert box == pytest.approx(BOX, abs=1.5)
    assert result["status_text"].startswith("1 positive, 1 negative, 1 box")
    assert (ARTIFACTS / f"editor-{frontend}.png").stat().st_size > 10_000
    # the editors of the loaded examples show their picture: the image, and the video's first frame
    assert result["example_editor_images"] == {"click_to_caption": ["640x480"], "describe_everything": [],
                                               "video_caption": ["320x240"]}
    info = get_json(f"{url}/object_info")
    for name, output in result["examples"].items():  # the browser's conversion equals the tests' converter
        mine = workflow_to_prompt(load_example(name), lambda kind: info[kind]["input"] if kind in info else None)
        assert {k: (v["class_type"], v["inputs"]) for k, v in output.items()} == \
               {k: (v["class_type"], v["inputs"]) for k, v in mine.items()}
