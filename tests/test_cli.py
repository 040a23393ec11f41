"""`pam describe`: the files it writes and that they agree with the Python API; the command's entry points."""

import json
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
from PIL import Image

from helpers import FIXTURE, needs_fixture
from pam_core import AutoMaskSettings, GenerationSettings, Region
from pam_core.checkpoint import DEFAULT_MODEL, DEFAULT_SAM2

MODEL_ARGS = ["--model", str(FIXTURE / "checkpoint"), "--sam2", str(FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt"),
              "--device", "cpu", "--max-new-tokens", "6"]
IMAGE = FIXTURE / "inputs" / "image.png"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A real `python -m pam_core.cli` process, as a user runs it."""
    out = tmp_path_factory.mktemp("describe")
    (out / "mask_007.png").write_bytes(b"stale output of an earlier run")
    proc = subprocess.run([sys.executable, "-m", "pam_core.cli", "describe", str(IMAGE), *MODEL_ARGS,
                           "--box", "70,110,270,340", "--point", "470,150,1", "--point", "430,200,1",
                           "--point", "150,220,0", "--task", "definition", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=300)
    return proc, out


def test_console_script_runs_main():
    from pam_core.cli import main

    [script] = entry_points(group="console_scripts", name="pam")
    assert script.value == "pam_core.cli:main" and script.load() is main


@pytest.mark.parametrize("command", [["describe"], ["describe-dataset"], ["describe-video"], ["parity"],
                                     ["eval", "recognition"], ["eval", "caption"], ["eval", "convert"], ["search"]])
def test_help_of_every_command(pam_cli, command):
    with pytest.raises(SystemExit) as exit_:
        pam_cli(*command, "--help")
    assert exit_.value.code == 0


def test_help_shows_the_library_defaults(pam_cli, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside a Hub id
    with pytest.raises(SystemExit):
        pam_cli("describe", "--help")
    text = " ".join(capsys.readouterr().out.split())
    auto = AutoMaskSettings()
    for flag, default in [("--model", DEFAULT_MODEL), ("--sam2", DEFAULT_SAM2), ("--max-regions", auto.max_regions),
                          ("--points-per-side", auto.points_per_side), ("--pred-iou-thresh", auto.pred_iou_thresh),
                          ("--stability-score-thresh", auto.stability_score_thresh),
                          ("--box-nms-thresh", auto.box_nms_thresh), ("--min-area", auto.min_area)]:
        entry = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]  # the option's help, up to the next option
        assert f"(default: {default}" in entry, entry


@needs_fixture
def test_describe_writes_results_masks_and_overlay(cli_run):
    proc, out = cli_run
    assert proc.returncode == 0, proc.stderr
    records = json.loads((out / "results.json").read_text())
    assert [r["prompt"] for r in records] == ["box", "points"]
    assert json.loads(proc.stdout) == records
    for record in records:
        mask = np.asarray(Image.open(out / record["mask_png"])) > 0
        assert mask.shape == (480, 640)
        assert int(mask.sum()) == record["mask_area"] > 0
        x0, y0, x1, y1 = record["box"]
        ys, xs = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert record["task"] == "definition" and record["lang"] == "en"
        assert "label" in record and "definition" in record and record["text"]
        assert record["object_score"] > 0
    assert not (out / "mask_007.png").exists()  # a stale mask of an earlier run is removed
    overlay = Image.open(out / "overlay.png")
    assert overlay.size == (640, 480)
    assert np.asarray(overlay).astype(int).sum() != np.asarray(Image.open(IMAGE).convert("RGB")).astype(int).sum()
    assert "regions 1-2 of 2" in proc.stderr  # progress on stderr


@needs_fixture
def test_describe_matches_the_api(cli_run, pam):
    proc, out = cli_run
    records = json.loads((out / "results.json").read_text())
    results = pam.describe(IMAGE, [Region.from_box([70, 110, 270, 340]),
                                   Region.from_points([[470, 150], [430, 200], [150, 220]], [1, 1, 0])],
                           task="definition", generation=GenerationSettings(max_new_tokens=6))
    assert [r.text for r in results] == [r["text"] for r in records]
    for result, record in zip(results, records):
        assert np.array_equal(result.mask, np.asarray(Image.open(out / record["mask_png"])) > 0)


@pytest.mark.slow
@needs_fixture
def test_describe_free_instruction_and_mask_prompt(pam_cli, tmp_path):
    mask = np.zeros((480, 640), dtype=np.uint8)
    mask[100:200, 300:420] = 255
    Image.fromarray(mask).save(tmp_path / "region.png")
    proc = pam_cli("describe", IMAGE, *MODEL_ARGS, "--mask", tmp_path / "region.png",
                   "--task", "What color is this object?", "--lang", "en", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    [record] = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["prompt"] == "mask" and record["task"] == "What color is this object?"
    assert record["box"] == [300, 100, 420, 200] and record["mask_area"] == 100 * 120
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / record["mask_png"])) > 0, mask > 0)
