"""Concept prompts (`PAM.find`, `pam describe --find`): SAM 3 finds the instances, PAM describes each as a box.
Self-contained: a random PAM and a random SAM 3 written by pam_core.synthetic (no shared fixture)."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pam_core import (
    PAM,
    CheckpointError,
    ConceptFinder,
    DependencyError,
    GenerationSettings,
    PromptError,
    Region,
    SettingsError,
    VideoPrompt,
    WeightsNotFoundError,
)
from pam_core.concepts import concept_finder
from pam_core.io import draw_overlay
from pam_core.stream import StreamItem

SETTINGS = GenerationSettings(max_new_tokens=4, min_new_tokens=4)
CONCEPTS = ["object", "red shape"]


def shapes_image(width=160, height=120) -> Image.Image:
    """A red rectangle and a green disc on blue."""
    image = Image.new("RGB", (width, height), (40, 60, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle([20, 30, 70, 100], fill=(220, 30, 30))
    draw.ellipse([90, 20, 150, 80], fill=(30, 200, 60))
    return image


IMAGE = shapes_image()


@pytest.fixture(scope="module")
def finder(synthetic_sam3):
    return ConceptFinder.from_pretrained(synthetic_sam3, local_files_only=True)


@pytest.fixture(scope="module")
def synthetic_pam(synthetic_checkpoint, finder):
    folder, sam2 = synthetic_checkpoint
    pam = PAM.from_pretrained(folder, sam2=sam2, device="cpu", local_files_only=True)
    pam.sam3 = finder
    return pam


def cut(scores: list[float], keep: int) -> float:
    """A threshold that keeps exactly the `keep` highest of `scores`."""
    ordered = sorted(scores, reverse=True)
    return (ordered[keep - 1] + ordered[keep]) / 2


def threshold_for_all(finder, keep: int) -> float:
    """A threshold that keeps at least `keep` instances of every one of CONCEPTS."""
    found = finder.find(IMAGE, CONCEPTS, threshold=0.0, max_instances=None)
    return min(cut([i.score for i in found if i.concept == concept], keep) for concept in CONCEPTS)


def test_random_sam3_finds_instances_of_the_image_itself(finder):
    everything = finder.find(IMAGE, "object", threshold=0.0, max_instances=None)
    queries = finder.model.config.detr_decoder_config.num_queries
    assert len(everything) == queries and len({i.score for i in everything}) > 1
    assert [i.score for i in everything] == sorted((i.score for i in everything), reverse=True)
    for instance in everything:
        x0, y0, x1, y1 = instance.box
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
        assert instance.mask.shape == (120, 160) and instance.mask.dtype == bool and instance.concept == "object"
    grey = finder.find(Image.new("RGB", IMAGE.size, (128, 128, 128)), "object", threshold=0.0, max_instances=None)
    boxes = np.array([i.box for i in everything])
    assert np.abs(boxes - np.array([i.box for i in grey])).max() > 10  # pixels: another image, other instances
    assert max(abs(a.score - b.score) for a, b in zip(everything, grey)) > 0.01


def test_find_is_transformers_sam3_with_the_image_encoded_once(finder):
    processor, model = finder.processor, finder.model
    threshold = cut([i.score for i in finder.find(IMAGE, CONCEPTS[1], threshold=0.0, max_instances=None)], 5)
    with torch.inference_mode():  # the plain transformers recipe, one full forward per concept
        outputs = model(**processor(images=IMAGE, text=CONCEPTS[1], return_tensors="pt"))
    [want] = processor.post_process_instance_segmentation(outputs, threshold=threshold, target_sizes=[(120, 160)])
    order = want["scores"].argsort(descending=True)
    calls = []
    hook = model.vision_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        found = finder.find(IMAGE, CONCEPTS, threshold=threshold, max_instances=None)
    finally:
        hook.remove()
    assert len(calls) == 1  # one image encoding for both concepts
    got = [i for i in found if i.concept == CONCEPTS[1]]
    assert len(got) == 5
    np.testing.assert_allclose([i.score for i in got], want["scores"][order].numpy(), rtol=1e-5)
    np.testing.assert_allclose([i.box for i in got], want["boxes"][order].clamp(min=0).numpy(), atol=1e-3)
    assert all(np.array_equal(i.mask, m.numpy().astype(bool)) for i, m in zip(got, want["masks"][order]))
    alone = finder.find(IMAGE, CONCEPTS[0], threshold=threshold, max_instances=None)
    assert [(i.box, i.score) for i in found if i.concept == CONCEPTS[0]] == [(i.box, i.score) for i in alone]


def test_threshold_and_max_instances(finder):
    everything = finder.find(IMAGE, CONCEPTS, threshold=0.0, max_instances=None)
    first = [i for i in everything if i.concept == CONCEPTS[0]]
    above = finder.find(IMAGE, CONCEPTS[0], threshold=cut([i.score for i in first], 3), max_instances=None)
    assert [(i.box, i.score) for i in above] == [(i.box, i.score) for i in first[:3]]
    capped = finder.find(IMAGE, CONCEPTS, threshold=0.0, max_instances=2)
    assert [i.concept for i in capped] == [CONCEPTS[0]] * 2 + [CONCEPTS[1]] * 2
    assert [i.score for i in capped[:2]] == [i.score for i in first[:2]]
    assert finder.find(IMAGE, CONCEPTS, threshold=1.0) == []


def test_find_is_describing_the_found_boxes(synthetic_pam, finder):
    tasks = ["category", "brief"]  # several texts per region, as describe shares one visual prefix among them
    threshold = threshold_for_all(finder, 1)
    synthetic_pam.cache.clear()
    found = synthetic_pam.find(IMAGE, CONCEPTS, task=tasks, threshold=threshold, max_instances=1, generation=SETTINGS)
    assert len(synthetic_pam.cache) == 1  # SAM 2 encoded the image once
    instances = finder.find(IMAGE, CONCEPTS, threshold=threshold, max_instances=1)
    assert len(found) == len(instances) == 2 and [r.concept for r in found] == CONCEPTS
    explicit = synthetic_pam.describe(IMAGE, [Region.from_box(i.box) for i in instances], task=tasks,
                                      generation=SETTINGS)
    for result, same, instance in zip(found, explicit, instances):
        assert result.texts == same.texts and result.token_ids == same.token_ids
        assert np.array_equal(result.mask, same.mask) and result.mask_score == same.mask_score
        assert (result.concept, result.concept_score) == (instance.concept, instance.score)
        assert np.array_equal(result.concept_mask, instance.mask) and result.prompt == "concept"
        record = result.to_dict()
        assert record["concept"] == instance.concept and record["concept_score"] == instance.score
        assert "concept" not in same.to_dict()
        json.dumps(record)


def test_a_stream_finds_concepts_as_find_does(synthetic_pam, finder):
    """`describe_stream` items with `concepts`: what `find` gives each image; no instance is an empty result;
    concepts with regions, or a bad concept, are that image's error."""
    threshold = threshold_for_all(finder, 1)
    expected = synthetic_pam.find(IMAGE, CONCEPTS, threshold=threshold, max_instances=1, generation=SETTINGS)
    items = [StreamItem(IMAGE, concepts=CONCEPTS, id="found"), StreamItem(IMAGE, concepts=["  "], id="blank"),
             StreamItem(IMAGE, [[0, 0, 9, 9]], concepts=CONCEPTS, id="both")]
    results = {r.id: r for r in synthetic_pam.describe_stream(items, generation=SETTINGS, find_threshold=threshold,
                                                              max_instances=1)}
    found = results["found"].regions
    assert [r.concept for r in found] == CONCEPTS and len(found) == len(expected)
    for result, same in zip(found, expected):
        assert result.token_ids == same.token_ids and np.array_equal(result.mask, same.mask)
        assert result.concept_score == same.concept_score and np.array_equal(result.concept_mask, same.concept_mask)
    assert "concept 1 is empty" in results["blank"].error
    assert "regions or concepts, not both" in results["both"].error
    [nothing] = synthetic_pam.describe_stream([StreamItem(IMAGE, concepts=CONCEPTS)], generation=SETTINGS,
                                              find_threshold=1.0)
    assert nothing.ok and nothing.regions == []


def test_no_instance_found_is_an_empty_result(synthetic_pam):
    assert synthetic_pam.find(IMAGE, CONCEPTS, threshold=1.0, generation=SETTINGS) == []


@pytest.mark.parametrize("concepts, message", [
    ("", "concept 1 is empty"), ("   ", "concept 1 is empty"), (["dog", " \t"], "concept 2 is empty"),
    ([], "give at least one concept"), ([3], "concept 1 must be text"),
    ("word " * 40, "SAM 3 reads at most 32"),
])
def test_bad_concepts_are_clear_errors(synthetic_pam, concepts, message):
    with pytest.raises(PromptError, match=message):
        synthetic_pam.find(IMAGE, concepts, generation=SETTINGS)


def test_bad_find_settings_are_clear_errors(synthetic_pam):
    with pytest.raises(SettingsError, match="between 0 and 1"):
        synthetic_pam.find(IMAGE, "dog", threshold=1.5)
    with pytest.raises(SettingsError, match="max_instances must be >= 1"):
        synthetic_pam.find(IMAGE, "dog", max_instances=0)


def test_sam3_folder_with_missing_files_names_them(synthetic_sam3, tmp_path):
    broken = tmp_path / "sam3"
    shutil.copytree(synthetic_sam3, broken)
    for name in ("model.safetensors", "processor_config.json", "tokenizer.json", "vocab.json"):
        (broken / name).unlink()
    with pytest.raises(CheckpointError, match=f"SAM 3 checkpoint {broken} is missing model.safetensors .*"
                                              r"processor_config.json .*tokenizer.json \(or vocab.json"):
        ConceptFinder.from_pretrained(broken)
    with pytest.raises(CheckpointError, match="must be a folder"):
        ConceptFinder.from_pretrained(synthetic_sam3 / "config.json")
    with pytest.raises(WeightsNotFoundError, match="SAM 3 folder not found"):
        ConceptFinder.from_pretrained(tmp_path / "nowhere" / "sam3" / "x")


def test_missing_hub_weights_name_the_licence_step():
    with pytest.raises(WeightsNotFoundError) as error:
        concept_finder("facebook/sam3", local_files_only=True)
    message = str(error.value)
    assert "'facebook/sam3' is not in the local Hugging Face cache and downloads are disabled" in message
    assert "accept the SAM License at https://huggingface.co/facebook/sam3" in message
    assert "then download it" in message and "hf download facebook/sam3" in message


def test_transformers_without_sam3_names_the_version_to_install(tmp_path):
    """Runs where transformers has no Sam3Model: the lowest-transformers tier (tests/test_transformers_min.py)."""
    import transformers

    if hasattr(transformers, "Sam3Model"):
        pytest.skip("this transformers has SAM 3; tests/test_transformers_min.py runs this on the lowest one")
    with pytest.raises(DependencyError, match=r"transformers 5.0 or newer \(Sam3Model\); this environment has "
                                              r"transformers 4\..*pip install -U 'transformers>=5.0'"):
        ConceptFinder.from_pretrained(tmp_path)


# --- the command line ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_files(synthetic_checkpoint, synthetic_sam3, tmp_path_factory):
    folder, sam2 = synthetic_checkpoint
    image = tmp_path_factory.mktemp("find") / "shapes.png"
    IMAGE.save(image)
    return image, ["--model", folder, "--sam2", sam2, "--sam3", synthetic_sam3, "--device", "cpu",
                   "--max-new-tokens", "4", "--repetition-penalty", "1.0"]


def test_cli_describe_find_writes_each_concept(pam_cli, cli_files, synthetic_pam, finder, tmp_path):
    image, model_args = cli_files
    threshold = threshold_for_all(finder, 2)
    proc = pam_cli("describe", image, *model_args, "--find", CONCEPTS[0], "--find", CONCEPTS[1],
                   "--find-threshold", threshold, "--max-instances", "1", "--task", "category", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = json.loads((tmp_path / "results.json").read_text())
    want = synthetic_pam.find(IMAGE, CONCEPTS, threshold=threshold, max_instances=1,
                              generation=GenerationSettings(max_new_tokens=4, repetition_penalty=1.0))
    assert len(records) == len(want) == 2
    for record, result in zip(records, want):
        assert {k: v for k, v in record.items() if k in result.to_dict()} == json.loads(json.dumps(result.to_dict()))
        saved = np.asarray(Image.open(tmp_path / record["mask_png"])) > 0
        assert np.array_equal(saved, result.mask)
    assert [r["concept"] for r in records] == [r.concept for r in want]
    overlay = np.asarray(Image.open(tmp_path / "overlay.png"))
    labelled = draw_overlay(IMAGE, [(r.mask, r.box, f"{r.concept}: {r.fields['label']}") for r in want])
    assert np.array_equal(overlay, np.asarray(labelled))  # each region written as "concept: label"


def test_cli_describe_dataset_find_writes_each_concept(pam_cli, cli_files, synthetic_pam, finder, tmp_path):
    """`pam describe-dataset --find`: rows without regions get SAM 3's instances, with their concept as the prompt;
    rows with regions keep theirs; --find with --everything is refused."""
    import pyarrow.dataset as ds

    image, model_args = cli_files
    threshold = threshold_for_all(finder, 2)
    manifest = tmp_path / "images.jsonl"
    manifest.write_text(json.dumps({"image": str(image), "id": "found"}) + "\n"
                        + json.dumps({"image": str(image), "id": "boxed", "regions": [{"box": [20, 30, 70, 100]}]})
                        + "\n")
    find = ["--find", CONCEPTS[0], "--find", CONCEPTS[1], "--find-threshold", threshold, "--max-instances", "1"]
    proc = pam_cli("describe-dataset", manifest, *model_args, *find, "--task", "category", "--out", tmp_path / "out",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = {(r["id"], r["region"]): r for r in ds.dataset(tmp_path / "out").to_table().to_pylist()}
    want = synthetic_pam.find(IMAGE, CONCEPTS, threshold=threshold, max_instances=1,
                              generation=GenerationSettings(max_new_tokens=4, repetition_penalty=1.0))
    assert sorted(k for k in rows if k[0] == "found") == [("found", i) for i in range(len(want))]
    for result in want:
        row = rows["found", result.index]
        assert (row["concept"], row["concept_score"]) == (result.concept, result.concept_score)
        assert json.loads(row["prompt"]) == {"find": result.concept}
        assert row["text_category"] == result.texts["category"]
    boxed = rows["boxed", 0]
    assert json.loads(boxed["prompt"]) == {"box": [20, 30, 70, 100]} and boxed["concept"] is None
    assert "give one" in pam_cli.error("describe-dataset", manifest, *model_args, *find, "--everything", "--out",
                                       tmp_path / "other")


def test_cli_find_errors_are_messages(pam_cli, cli_files, tmp_path):
    image, model_args = cli_files
    assert "concept 1 is empty" in pam_cli.error("describe", image, *model_args, "--find", " ", "--out", tmp_path)
    assert "--find finds the regions itself" in pam_cli.error("describe", image, *model_args, "--find", "dog",
                                                               "--box", "1,1,20,20", "--out", tmp_path)
    assert "between 0 and 1" in pam_cli.error("describe", image, *model_args, "--find", "dog", "--find-threshold",
                                              "2", "--out", tmp_path)
    missing = pam_cli.error("describe", image, *model_args, "--sam3", "facebook/sam3", "--local-files-only",
                            "--find", "dog", "--out", tmp_path)
    assert "accept the SAM License at https://huggingface.co/facebook/sam3" in missing


@pytest.mark.slow
def test_cli_describe_video_find_tracks_what_sam3_finds_on_the_frame(pam_cli, cli_files, synthetic_pam, finder,
                                                                     tmp_path):
    _, model_args = cli_files
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):  # the shapes moving right
        Image.fromarray(np.roll(np.asarray(IMAGE), 4 * index, axis=1)).save(frames / f"{index:03d}.png")
    [found] = finder.find(Image.open(frames / "001.png"), CONCEPTS[0], threshold=0.0, max_instances=1)
    out = tmp_path / "out"
    proc = pam_cli("describe-video", frames, *model_args, "--find", CONCEPTS[0], "--frame", "1",
                   "--find-threshold", "0", "--max-instances", "1", "--max-new-tokens", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["prompts"] == [{"object": 0, "frame": 1, "prompt": "box", "concept": CONCEPTS[0],
                                   "concept_score": found.score}]
    want = synthetic_pam.describe_video(frames, [VideoPrompt(Region.from_box(found.box), 1)],
                                        generation=GenerationSettings(max_new_tokens=2, repetition_penalty=1.0))
    assert results["captions"] == [c.to_dict() for c in want.captions] and len(want.captions) == 1
    nothing = pam_cli("describe-video", frames, *model_args, "--find", CONCEPTS[0], "--find-threshold", "1",
                      "--out", tmp_path / "none")
    assert nothing.returncode == 0, nothing.stderr
    assert json.loads((tmp_path / "none" / "results.json").read_text())["captions"] == []
