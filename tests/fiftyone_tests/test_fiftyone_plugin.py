"""The FiftyOne plugin against a real mongod: apply_pam, the operators (immediate and delegated), the zoo
Model, caption search and the panel's texts, with the fixture checkpoint as the model."""

import json
import shutil
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.zoo as foz
import numpy as np
import pytest
from PIL import Image

from fiftyone_plugin import PAMRegionModel, apply_pam, caption_search_view
from fiftyone_plugin.core import run_pam
from fiftyone_plugin.panel import region_texts_markdown
from helpers import CHECKPOINT, FIXTURE, SAM2, needs_fixture
from helpers import FIFTYONE_PLUGIN as PLUGIN
from pam_core import AutoMaskSettings, Region

pytestmark = [pytest.mark.host, needs_fixture]
TOKENS = 6  # short texts keep the CPU tests fast; the text path is the same
# Red rectangle, green disc, yellow triangle of the fixture image (xyxy pixels of a 640x480 image).
SHAPES = {"rectangle": (80, 120, 260, 330), "disc": (360, 60, 560, 240), "triangle": (330, 300, 600, 450)}


def relative_box(box, width=640, height=480):
    x0, y0, x1, y1 = box
    return [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height]


@pytest.fixture
def images(tmp_path):
    """The fixture image, a mirrored copy, and a corrupt file."""
    first = tmp_path / "shapes.png"
    shutil.copy(FIXTURE / "inputs" / "image.png", first)
    second = tmp_path / "mirrored.png"
    Image.open(first).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(second)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(first.read_bytes()[:200])
    return first, second, corrupt


def boxes_dataset(paths, name, shapes=("rectangle",)):
    """Images with `ground_truth` boxes around some of the fixture image's shapes (one keeps the CPU tests fast)."""
    dataset = fo.Dataset(name, overwrite=True)
    samples = []
    for path in paths:
        gt = fo.Detections(detections=[fo.Detection(label=shape, bounding_box=relative_box(SHAPES[shape]))
                                       for shape in shapes])
        samples.append(fo.Sample(filepath=str(path), ground_truth=gt))
    dataset.add_samples(samples)
    return dataset


def test_apply_pam_writes_one_detection_per_prompt_with_the_engines_texts(pam, images):
    dataset = boxes_dataset(images[:1], "pam-boxes", shapes=("rectangle", "disc"))
    summary = apply_pam(dataset, label_field="pam", prompt_field="ground_truth", tasks=("category", "detailed"),
                        model=pam, max_new_tokens=TOKENS)
    assert summary == {"label_field": "pam", "samples": 1, "skipped": 0, "failed": 0, "regions": 2, "errors": {}}
    sample = dataset.first()
    detections = sample.pam.detections
    assert [d.prompt_label for d in detections] == ["rectangle", "disc"]
    # Exactly what pam_core says for the same regions and tasks.
    expected = pam.describe(images[0], [Region.from_box(SHAPES["rectangle"]), Region.from_box(SHAPES["disc"])],
                            task=["category", "detailed"], generation=pam_settings())
    for detection, result in zip(detections, expected):
        assert detection.label == result.fields["label"]
        assert detection.caption == result.texts["detailed"]
        assert detection.lang == "en" and detection.pam_model == "PAM"
        assert detection.confidence == pytest.approx(result.mask_score)
        assert detection.object_score == pytest.approx(result.object_score)
        # The mask comes back cropped to its tight box, which is the engine's box in relative coordinates.
        x0, y0, x1, y1 = (int(v) for v in result.box)
        assert detection.bounding_box == pytest.approx(relative_box((x0, y0, x1, y1)))
        assert np.array_equal(detection.mask, result.mask[y0:y1, x0:x1])
    schema = dataset.get_field_schema(flat=True)
    for attribute in ("caption", "pam_model", "lang", "prompt_label", "object_score"):
        assert f"pam.detections.{attribute}" in schema, attribute
    assert sample.pam_error is None


def pam_settings():
    from pam_core import GenerationSettings

    return GenerationSettings(max_new_tokens=TOKENS)


def test_keypoints_polylines_and_masks_are_prompts(pam, images):
    dataset = fo.Dataset("pam-prompts", overwrite=True)
    mask = np.zeros((480, 640), bool)
    mask[120:330, 80:260] = True
    detection = fo.Detection.from_mask(mask, label="rectangle")
    disc = fo.Keypoint(label="disc", points=[(460 / 640, 150 / 480)])
    triangle = fo.Polyline(label="triangle", points=[[(330 / 640, 450 / 480), (420 / 640, 300 / 480),
                                                      (600 / 640, 440 / 480)]], closed=True, filled=True)
    dataset.add_sample(fo.Sample(filepath=str(images[0]), masks=fo.Detections(detections=[detection]),
                                 points=fo.Keypoints(keypoints=[disc]), shapes=fo.Polylines(polylines=[triangle])))
    for prompt_field, label in (("masks", "rectangle"), ("points", "disc"), ("shapes", "triangle")):
        apply_pam(dataset, label_field=f"pam_{prompt_field}", prompt_field=prompt_field, tasks="brief", model=pam,
                  max_new_tokens=TOKENS)
        [result] = dataset.first()[f"pam_{prompt_field}"].detections
        assert result.prompt_label == label and isinstance(result.brief_caption, str)
    # A mask prompt returns that very mask.
    [from_mask] = dataset.first().pam_masks.detections
    assert from_mask.to_segmentation(frame_size=(640, 480), target=1).mask.astype(bool).sum() == mask.sum()
    [from_point] = dataset.first().pam_points.detections
    [direct] = pam.describe(images[0], [Region.from_points([(460, 150)])], task="brief", generation=pam_settings())
    assert from_point.brief_caption == direct.text


def test_failed_samples_are_recorded_and_an_interrupted_run_resumes(pam, images):
    missing = images[0].parent / "missing.png"
    dataset = boxes_dataset([images[0], missing, images[2], images[1]], "pam-robust")
    steps = run_pam(dataset, prompt_field="ground_truth", tasks="category", model=pam, max_new_tokens=TOKENS)
    assert next(steps) == (0, 4)
    assert next(steps) == (1, 4)
    steps.close()  # interrupted after the first sample to finish (images finish in any order): it is kept
    described = len(dataset.exists("pam"))
    assert described + len(dataset.exists("pam_error")) == 1

    summary = apply_pam(dataset, prompt_field="ground_truth", tasks="category", model=pam, max_new_tokens=TOKENS)
    assert (summary["skipped"], summary["samples"], summary["failed"]) == (described, 2 - described, 2)
    errors = dict(zip(dataset.values("filepath"), dataset.values("pam_error")))
    assert "image file not found" in errors[str(missing)]
    assert "cannot read image" in errors[str(images[2])]
    assert errors[str(images[0])] is None and errors[str(images[1])] is None
    assert dataset.count("pam.detections") == 2

    shutil.copy(images[0], missing)  # fixed: the next run does only the failed samples
    summary = apply_pam(dataset, prompt_field="ground_truth", tasks="category", model=pam, max_new_tokens=TOKENS)
    assert (summary["skipped"], summary["samples"], summary["failed"]) == (2, 1, 1)
    assert dataset.count("pam.detections") == 3


def test_existing_fields_are_never_overwritten_unless_asked(pam, images):
    dataset = boxes_dataset(images[:1], "pam-guard")
    with pytest.raises(ValueError, match="not written by PAM"):
        apply_pam(dataset, label_field="ground_truth", prompt_field="ground_truth", model=pam)
    assert dataset.first().ground_truth.detections[0].label == "rectangle"
    apply_pam(dataset, prompt_field="ground_truth", tasks="category", model=pam, max_new_tokens=TOKENS)
    with pytest.raises(ValueError, match="other settings"):
        apply_pam(dataset, prompt_field="ground_truth", tasks="brief", model=pam, max_new_tokens=TOKENS)
    summary = apply_pam(dataset, prompt_field="ground_truth", tasks="brief", model=pam, max_new_tokens=TOKENS,
                        overwrite=True)
    assert summary["samples"] == 1 and summary["skipped"] == 0
    assert all(d.brief_caption and d.label is None for d in dataset.first().pam.detections)


def test_free_instruction_goes_to_answer(pam, images):
    dataset = boxes_dataset(images[:1], "pam-free")
    instruction = "What colour is this shape?"
    apply_pam(dataset, prompt_field="ground_truth", tasks=("category", instruction), model=pam, max_new_tokens=TOKENS)
    [expected] = pam.describe(images[0], [Region.from_box(SHAPES["rectangle"])], task=["category", instruction],
                              generation=pam_settings())
    [detection] = dataset.first().pam.detections
    assert detection.instruction == instruction and detection.answer == expected.texts[instruction]
    with pytest.raises(ValueError, match="one free instruction"):
        apply_pam(dataset, label_field="pam2", prompt_field="ground_truth",
                  tasks=(instruction, "Name its colour please"), model=pam)


def test_masks_can_live_on_disk(pam, images, tmp_path):
    dataset = boxes_dataset(images[:1], "pam-mask-files")
    apply_pam(dataset, prompt_field="ground_truth", tasks="category", model=pam, max_new_tokens=TOKENS,
              mask_dir=tmp_path / "masks")
    for detection in dataset.first().pam.detections:
        assert detection.mask is None and Path(detection.mask_path).is_file()
        assert detection.get_mask().any()


def test_bad_arguments_fail_before_any_work(pam, images):
    dataset = boxes_dataset(images[:1], "pam-bad-args")
    with pytest.raises(ValueError, match="unknown task"):
        apply_pam(dataset, prompt_field="ground_truth", tasks="nonsense", model=pam)
    with pytest.raises(ValueError, match="does not exist"):
        apply_pam(dataset, prompt_field="no_such_field", model=pam)
    with pytest.raises(ValueError, match="Detections, Keypoints or Polylines"):
        dataset.add_sample_field("tag_label", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
        apply_pam(dataset, prompt_field="tag_label", model=pam)
    with pytest.raises(ValueError, match="not on a PatchesView"):
        apply_pam(dataset.to_patches("ground_truth"), model=pam)
    assert "pam" not in dataset.get_field_schema()


def test_apply_model_with_a_prompt_field(pam, images):
    dataset = boxes_dataset(images[:2], "pam-apply-model")
    model = PAMRegionModel(model=pam, tasks=("category", "brief"), max_new_tokens=TOKENS)
    dataset.apply_model(model, label_field="pam", prompt_field="ground_truth")
    assert dataset.count("pam.detections") == 2
    first = dataset.first().pam.detections[0]
    assert first.label and first.brief_caption and first.mask is not None


# Few automatic prompts and no quality thresholds: the random fixture model finds regions, and fast.
CHEAP_AUTO = AutoMaskSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, max_regions=2)


def test_apply_pam_describes_everything_without_prompts(pam, images):
    dataset = boxes_dataset(images[:1], "pam-everything")
    summary = apply_pam(dataset, tasks=("category", "brief"), model=pam, max_new_tokens=TOKENS, auto=CHEAP_AUTO)
    expected = pam.describe_everything(images[0], task=["category", "brief"], generation=pam_settings(),
                                       auto=CHEAP_AUTO)
    detections = dataset.first().pam.detections
    assert summary["regions"] == len(expected) == len(detections) >= 1
    assert [(d.label, d.brief_caption) for d in detections] == \
        [(r.fields["label"], r.texts["brief"]) for r in expected]
    assert all(d.get_attribute_value("prompt_label", None) is None for d in detections)


def test_apply_model_without_a_prompt_field_describes_everything(pam, images):
    dataset = boxes_dataset(images[:1], "pam-apply-model-auto")
    model = PAMRegionModel(model=pam, tasks="category", max_new_tokens=TOKENS, auto=CHEAP_AUTO)
    dataset.apply_model(model, label_field="pam")
    assert dataset.count("pam.detections") >= 1
    assert dataset.first().pam.detections[0].label


def test_zoo_model_loads_from_a_registered_source(images, tmp_path):
    """The remote-zoo source as FiftyOne sees it after `register_zoo_model_source`: a folder under the zoo dir."""
    zoo = Path(__file__).resolve().parents[2] / "fiftyone_plugin" / "zoo"
    source = Path(fo.config.model_zoo_dir) / json.loads((zoo / "manifest.json").read_text())["name"]
    shutil.copytree(zoo, source, dirs_exist_ok=True)
    assert "pam-suite/pam-1.5b" in foz.list_zoo_models()
    downloaded = source / "pam-1.5b"  # a downloaded folder: the checkpoint as on the Hub + SAM 2.1 weights
    downloaded.mkdir(exist_ok=True)
    (downloaded / "PAM-1.5B").symlink_to(CHECKPOINT, target_is_directory=True)
    (downloaded / "sam2.1_hiera_large.pt").symlink_to(SAM2)
    (downloaded / "sam2.1_hiera_large.yaml").symlink_to(SAM2.with_suffix(".yaml"))
    model = foz.load_zoo_model("pam-suite/pam-1.5b", tasks="category", max_new_tokens=TOKENS, device="cpu")
    dataset = boxes_dataset(images[:1], "pam-zoo")
    dataset.apply_model(model, label_field="pam", prompt_field="ground_truth")
    assert [d.prompt_label for d in dataset.first().pam.detections] == ["rectangle"]


def test_zoo_download_offline_says_what_to_run(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "pam_zoo_source", Path(__file__).resolve().parents[2] / "fiftyone_plugin" / "zoo" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(FileNotFoundError, match="hf download Perceive-Anything/PAM-3B"):
        module.download_model("pam-suite/pam-3b", str(tmp_path / "pam-3b"))
    with pytest.raises(FileNotFoundError, match="unknown PAM zoo model 'pam-suite/pam-7b'; use one of pam-suite/"):
        module.download_model("pam-suite/pam-7b", str(tmp_path / "pam-7b"))


def operator_params(**extra):
    return dict(prompt_field="ground_truth", tasks=["category", "detailed"], lang="en", label_field="pam",
                model=str(CHECKPOINT), sam2=str(SAM2), max_new_tokens=TOKENS, **extra)


def test_plugin_registers_its_operators_and_panel():
    uris = {op.uri for op in foo.list_operators()}
    assert {f"{PLUGIN}/{name}" for name in ("describe_regions", "search_captions", "region_texts")} <= uris


def test_plugin_installs_with_fiftyone_plugins_download(tmp_path, monkeypatch):
    """`fiftyone plugins download <archive url> --plugin-names @pam-suite/pam` from a local HTTP server."""
    import functools
    import http.server
    import threading

    import fiftyone.plugins as fop

    repo = tmp_path / "archive" / "pam-suite"
    shutil.copytree(Path(__file__).resolve().parents[2] / "fiftyone_plugin", repo / "fiftyone_plugin",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.make_archive(str(tmp_path / "served" / "pam-suite"), "zip", tmp_path / "archive")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(fo.config, "plugins_dir", str(tmp_path / "plugins"))
    try:
        fop.download_plugin(f"http://127.0.0.1:{server.server_port}/pam-suite.zip", plugin_names=[PLUGIN])
    finally:
        server.shutdown()
        server.server_close()
    plugin = fop.get_plugin(PLUGIN)
    assert Path(plugin.directory) == tmp_path / "plugins" / "@pam-suite" / "pam"
    assert set(plugin.operators) == {"describe_regions", "search_captions", "region_texts"}
    assert {f"{PLUGIN}/describe_regions", f"{PLUGIN}/search_captions"} <= {op.uri for op in foo.list_operators()}


def test_describe_operator_runs_immediately(images):
    dataset = boxes_dataset(images[:2], "pam-operator")
    result = foo.execute_operator(f"{PLUGIN}/describe_regions",
                                  ctx=dict(dataset=dataset, params=operator_params(view_target="DATASET")))
    assert result.error is None, result.error
    assert dataset.count("pam.detections") == 2
    assert all(d.caption is not None for d in dataset.first().pam.detections)
    # the model's name, not the local path of its checkpoint (issue #17: datasets are shared)
    assert dataset.distinct("pam.detections.pam_model") == [CHECKPOINT.name]
    assert dataset.info["pam_runs"]["pam"]["model"] == CHECKPOINT.name


def test_describe_operator_on_selected_samples(images):
    dataset = boxes_dataset(images[:2], "pam-operator-selected")
    second = dataset.last().id
    result = foo.execute_operator(f"{PLUGIN}/describe_regions", ctx=dict(
        dataset=dataset, selected=[second], params=operator_params(view_target="SELECTED_SAMPLES")))
    assert result.error is None, result.error
    assert dataset.first().pam is None and len(dataset.last().pam.detections) == 1


def test_describe_operator_runs_delegated_by_the_service(images):
    from fiftyone.operators.delegated import DelegatedOperationService

    dataset = boxes_dataset(images[:1], "pam-delegated")
    result = foo.execute_operator(f"{PLUGIN}/describe_regions", ctx=dict(dataset=dataset, params=operator_params()),
                                  request_delegation=True)
    assert result.delegated
    assert "pam" not in dataset.get_field_schema()  # queued, not run yet
    service = DelegatedOperationService()
    service.execute_queued_operations(operator=f"{PLUGIN}/describe_regions", dataset_name=dataset.name, limit=1)
    [operation] = service.list_operations(operator=f"{PLUGIN}/describe_regions", dataset_name=dataset.name)
    assert operation.run_state == "completed", operation.run_state
    assert operation.status.progress == 1.0
    dataset.reload()
    assert dataset.count("pam.detections") == 1


def test_execution_options_offer_delegation_for_large_views(images):
    from fiftyone.operators.executor import ExecutionContext

    operator = foo.get_operator(f"{PLUGIN}/describe_regions")
    small = boxes_dataset(images[:2], "pam-small")
    large = boxes_dataset(images[:2] * 10, "pam-large")
    options = {}
    for dataset in (small, large):
        ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params={}))
        options[dataset.name] = operator.resolve_execution_options(ctx).to_dict()
    assert options["pam-small"]["allow_immediate_execution"] and not options["pam-small"]["default_choice_to_delegated"]
    assert not options["pam-large"]["allow_immediate_execution"] and options["pam-large"]["allow_delegated_execution"]
    form = operator.resolve_input(ctx).to_json()["type"]["properties"]
    assert {"prompt_field", "tasks", "instruction", "lang", "label_field", "overwrite", "model", "sam2"} <= set(form)
    assert "ground_truth" in form["prompt_field"]["type"]["values"]


@pytest.fixture
def captioned():
    """Regions with known texts, stored the way apply_pam stores them."""
    dataset = fo.Dataset("pam-search", overwrite=True)
    texts = [("umbrella", "A red umbrella stands open on the sand."), ("car", "A small red car parked by an umbrella."),
             ("dog", "A brown dog lies on the grass.")]
    for label, caption in texts:
        detection = fo.Detection(label=label, bounding_box=[0.1, 0.1, 0.5, 0.5], caption=caption, lang="en")
        dataset.add_sample(fo.Sample(filepath=f"/nonexistent/{label}.png", pam=fo.Detections(detections=[detection])))
    dataset.info["pam_runs"] = {"pam": {"prompt_field": None, "tasks": ["category", "detailed"], "lang": "en",
                                        "model": "test"}}
    dataset.save()
    return dataset


@pytest.mark.parametrize("query, match, labels", [
    ("red umbrella", "all", ["umbrella", "car"]),
    ("red umbrella", "phrase", ["umbrella"]),
    ("GRASS umbrella", "any", ["umbrella", "car", "dog"]),
    ("brown", "all", ["dog"]),
    ("umbrella dog", "all", []),
])
def test_search_captions_operator_finds_words_inside_captions(captioned, query, match, labels):
    result = foo.execute_operator(f"{PLUGIN}/search_captions", ctx=dict(
        dataset=captioned, params=dict(label_field="pam", query=query, match=match)))
    assert result.error is None, result.error
    view = caption_search_view(captioned, "pam", query, match)
    assert sorted(view.distinct("pam.detections.label")) == sorted(labels)
    assert result.result["regions"] == len(labels)


def test_panel_markdown_shows_full_texts(captioned):
    sample = captioned.first()
    text = region_texts_markdown(sample, ["pam"])
    # Markdown characters in model text are escaped, so the App shows the text as written.
    assert "**pam #1: umbrella**" in text and r"**Caption:** A red umbrella stands open on the sand\." in text
    other = captioned.last().pam.detections[0].id
    assert region_texts_markdown(sample, ["pam"], {other}) == "No PAM regions on this sample."


def kill_sample_cursors() -> int:
    """Kills every open cursor on a samples collection of this database, as MongoDB does to a cursor idle for
    30 minutes; returns how many it killed."""
    db = fo.core.odm.get_db_conn()
    idle = db.client.admin.aggregate([{"$currentOp": {"idleCursors": True, "allUsers": True}},
                                      {"$match": {"type": "idleCursor", "ns": {"$regex": f"^{db.name}\\.samples\\."}}}])
    killed = 0
    for operation in idle:
        reply = db.command("killCursors", operation["ns"].split(".", 1)[1], cursors=[operation["cursor"]["cursorId"]])
        killed += len(reply["cursorsKilled"])
    return killed


@pytest.mark.host
def test_a_resumed_run_loses_no_sample_when_cursors_die(pam, images):
    """Issue #17: MongoDB kills cursors idle for 30 minutes (a CPU run can take that long over one cursor batch)
    and FiftyOne re-opens a lost cursor by skipping the samples it had read. A resumed run that iterated "the
    samples not done yet" while saving them then skipped samples it never described, silently. Here every
    cursor is killed after every sample, as if PAM had taken half an hour each time."""
    count = 131  # more than one cursor batch (101 documents)
    dataset = fo.Dataset("pam-lost-cursor", overwrite=True)
    dataset.add_samples([fo.Sample(filepath=str(images[0]), ground_truth=fo.Detections()) for _ in range(count)])
    steps = run_pam(dataset, prompt_field="ground_truth", tasks="category", model=pam)
    assert next(steps) == (0, count) and next(steps) == (1, count)
    steps.close()  # interrupted after one sample: the next run resumes

    steps = run_pam(dataset, prompt_field="ground_truth", tasks="category", model=pam)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            summary = stop.value
            break
        kill_sample_cursors()
    assert (summary["skipped"], summary["samples"], summary["failed"]) == (1, count - 1, 0)
    assert len(dataset.exists("pam")) == count
