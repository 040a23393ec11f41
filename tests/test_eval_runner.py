"""`pam eval`'s resume rule with a stand-in for PAM: only predictions made from the same input are reused."""

import json
from types import SimpleNamespace

import pytest
from PIL import Image

from pam_core.evaluation import Annotation, EvalError
from pam_core.evaluation.runner import PREDICTIONS, EvalRun, predict


class FakePAM:
    """Answers every region with its box, and counts the regions it was asked about."""

    def __init__(self):
        self.asked = []

    def describe(self, image, prompts, task, lang, generation):
        self.asked += [p.box for p in prompts]
        return [SimpleNamespace(text=f"box {p.box}", fields={}) for p in prompts]


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
