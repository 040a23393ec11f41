"""`pam eval`'s resume rule with a stand-in for PAM: only predictions made from the same input are reused."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from helpers import needs_fixture
from pam_core import GenerationSettings
from pam_core.evaluation import Annotation, EvalError
from pam_core.evaluation.runner import PREDICTIONS, EvalRun, predict


class FakePAM:
    """Answers every region with its box and every video clip with its first frame and history, and records
    what it was asked. Stands in for PAM where only the runner's order and bookkeeping are under test. Its
    stream answers the last image first, as the real engine may (it yields images as they finish)."""

    def __init__(self):
        self.asked = []

    def describe_stream(self, items, task, lang, generation):
        results = []
        for index, item in enumerate(items):
            self.asked += [p.box for p in item.regions]
            regions = [SimpleNamespace(text=f"box {p.box}", fields={}) for p in item.regions]
            results.append(SimpleNamespace(index=index, id=item.id, regions=regions, ok=True, error=None))
        yield from reversed(results)

    def describe_video(self, frames, prompts, *, task, lang, generation, history, keep_frames):
        assert task == "caption" and len(prompts) == 1 and not keep_frames
        self.asked.append((Path(frames[0]).stem, history))
        return SimpleNamespace(captions=[SimpleNamespace(text=f"{Path(frames[0]).stem} after {history}")])


@pytest.fixture
def records(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    return [Annotation(id=f"r{i}", refs=["x"], image=str(image), region={"box": [i, i, i + 8, i + 8]})
            for i in range(3)]


RUN = EvalRun.create("caption", model=None)


def _predict(records, out, pam):
    return predict(records, out, RUN, lambda: pam, batch=1, show_progress=False)


def test_a_resumed_model_run_predicts_only_the_missing_regions(records, tmp_path):
    out = tmp_path / "out"
    first = FakePAM()
    done = _predict(records, out, first)
    assert len(first.asked) == 3 and sorted(done) == ["r0", "r1", "r2"]

    lines = (out / PREDICTIONS).read_text(encoding="utf-8").splitlines(keepends=True)
    (out / PREDICTIONS).write_text("".join(lines[:2]), encoding="utf-8")  # interrupted after two regions
    resumed = FakePAM()
    assert _predict(records, out, resumed) == done
    assert resumed.asked == [(2.0, 2.0, 10.0, 10.0)]

    def no_model():
        raise AssertionError("a finished run must not load the model")

    assert predict(records, out, RUN, no_model, show_progress=False) == done


def test_images_finished_out_of_order_are_written_in_annotation_order(records, tmp_path):
    _predict(records, tmp_path / "out", FakePAM())  # one image per stream item (batch=1), answered last first
    lines = [json.loads(line) for line in (tmp_path / "out" / PREDICTIONS).read_text().splitlines()]
    assert [(line["id"], line["prediction"]) for line in lines] == \
        [(r.id, f"box {tuple(float(v) for v in r.region['box'])}") for r in records]


@needs_fixture
def test_a_region_outside_its_image_stops_the_run_after_the_images_before_it(pam, tmp_path):
    """The streaming engine reports the bad image while earlier ones still decode: they are written, then the
    run stops with the annotation named."""
    large, small = tmp_path / "large.png", tmp_path / "small.png"
    Image.new("RGB", (64, 64), "red").save(large)
    Image.new("RGB", (32, 32)).save(small)
    records = [Annotation(id="fits", refs=["x"], image=str(large), region={"box": [0, 0, 40, 40]}),
               Annotation(id="outside", refs=["x"], image=str(small), region={"points": [[40, 40]]}),
               Annotation(id="also fits", refs=["x"], image=str(large), region={"points": [[50, 50]]})]
    run = EvalRun.create("caption", model=None, generation=GenerationSettings(max_new_tokens=3))
    with pytest.raises(EvalError, match=r"annotation outside \(.*small.png\): point \(40, 40\) lies outside the "
                                        r"32x32 image"):
        predict(records, tmp_path / "out", run, lambda: pam, show_progress=False)
    lines = [json.loads(line)["id"] for line in (tmp_path / "out" / PREDICTIONS).read_text().splitlines()]
    assert lines == ["fits", "also fits"]  # the image before the bad one, both its regions


def test_a_changed_region_is_not_resumed_from_the_old_prediction(records, tmp_path):
    out = tmp_path / "out"
    _predict(records, out, FakePAM())
    moved = [*records[:2], Annotation(id="r2", refs=["x"], image=records[2].image, region={"box": [0, 0, 30, 30]})]
    with pytest.raises(EvalError, match=r"predictions of another run: 1 region\(s\) \(e.g. 'r2'\)"):
        _predict(moved, out, FakePAM())
    again = FakePAM()
    predict(moved, out, RUN, lambda: again, restart=True, show_progress=False)
    assert len(again.asked) == 3


def test_other_given_predictions_are_not_replaced_by_the_old_ones(records, tmp_path):
    out = tmp_path / "out"
    given = [Annotation(id=r.id, refs=r.refs, image=r.image, prediction="a dog") for r in records]
    assert {p["prediction"] for p in _predict(given, out, FakePAM()).values()} == {"a dog"}
    other = [Annotation(id=r.id, refs=r.refs, image=r.image, prediction="a cat") for r in records]
    with pytest.raises(EvalError, match="use another --out or --restart"):
        _predict(other, out, FakePAM())
    # the same given predictions again are a finished run
    assert {p["prediction"] for p in _predict(given, out, FakePAM()).values()} == {"a dog"}
    # a model run over regions whose predictions were given before is another run too
    with pytest.raises(EvalError, match="predictions of another run: 3 region"):
        _predict(records, out, FakePAM())


def test_lines_without_an_input_key_are_another_run(records, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / PREDICTIONS).write_text(json.dumps({"id": "r0", "prediction": "old", "source": "pam"}) + "\n",
                                   encoding="utf-8")
    with pytest.raises(EvalError, match="another run"):
        _predict(records, out, FakePAM())


@pytest.fixture
def events(tmp_path):
    """Two videos' events in shuffled file order; event 2 of video A carries a given prediction."""
    frames = {}
    for name in ("a1", "a2", "a3", "a5", "b1"):
        frames[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (32, 32)).save(frames[name])

    def event(name, video, number, prediction=None):
        return Annotation(id=name, refs=["x"], frames=[str(frames[name])], region={"box": [1, 1, 9, 9]},
                          video=video, event=number, prediction=prediction)

    return [event("a3", "A", 3), event("b1", "B", 1), event("a1", "A", 1), event("a5", "A", 5),
            event("a2", "A", 2, prediction="given two")]


def test_video_events_are_captioned_in_order_each_after_the_previous_prediction(events, tmp_path):
    pam = FakePAM()
    done = _predict(events, tmp_path / "out", pam)
    assert pam.asked == [("a1", None), ("a3", "given two"), ("a5", "a3 after given two"), ("b1", None)]
    assert done["a5"]["prediction"] == "a5 after a3 after given two" and done["a5"]["history"] == "a3 after given two"
    lines = [json.loads(line)["id"] for line in (tmp_path / "out" / PREDICTIONS).read_text().splitlines()]
    assert lines == ["a2", "a1", "a3", "a5", "b1"]  # each written as it is done


def test_a_resumed_streaming_run_conditions_on_the_stored_prediction(events, tmp_path):
    out = tmp_path / "out"
    whole = _predict(events, out, FakePAM())
    lines = (out / PREDICTIONS).read_text(encoding="utf-8").splitlines(keepends=True)
    (out / PREDICTIONS).write_text("".join(lines[:3]), encoding="utf-8")  # stopped after a2, a1 and a3
    resumed = FakePAM()
    assert _predict(events, out, resumed) == whole
    assert resumed.asked == [("a5", "a3 after given two"), ("b1", None)]


def test_an_event_whose_previous_prediction_changed_is_not_reused(events, tmp_path):
    out = tmp_path / "out"
    _predict(events, out, FakePAM())
    changed = [e if e.id != "a2" else Annotation(**{**vars(e), "prediction": "other two"}) for e in events]
    with pytest.raises(EvalError, match=r"2 region\(s\) \(e.g. 'a3'\)"):  # a2 itself and a3, which followed it
        _predict(changed, out, FakePAM())
    inserted = [*events, Annotation(id="b0", refs=["x"], frames=events[1].frames, region={"box": [1, 1, 9, 9]},
                                    video="B", event=0)]
    with pytest.raises(EvalError, match=r"1 region\(s\) \(e.g. 'b1'\)"):  # b1 now follows an unpredicted event
        _predict(inserted, out, FakePAM())


def test_recognition_does_not_generate_video_regions(events, tmp_path):
    with pytest.raises(EvalError, match="pam eval recognition scores video regions from given predictions only"):
        predict(events, tmp_path / "out", EvalRun.create("recognition", model=None), FakePAM, show_progress=False)
