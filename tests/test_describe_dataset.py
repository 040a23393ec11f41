"""`pam describe-dataset`: rows equal to per-image `PAM.describe`, error rows, every source kind, both formats,
resume after SIGKILL and Ctrl-C without duplicates, and malformed manifests refused before the model loads."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import CHECKPOINT, SAM2, interruptible, needs_fixture
from pam_core import AutoMaskSettings, GenerationSettings
from pam_core.cli import main
from pam_core.datasets import DatasetOutput, output_schema, result_from_rows
from pam_core.errors import DatasetError
from pam_core.rle import rle_to_mask

TASKS = ["category", "definition"]
TASK_ARGS = [a for task in TASKS for a in ("--task", task)]
MODEL_ARGS = ["--model", CHECKPOINT, "--sam2", SAM2, "--device", "cpu", "--max-new-tokens", "4", "--no-progress"]
FAST = GenerationSettings(max_new_tokens=4)
# random weights need SAM 2's automatic-mask thresholds open; 2 x 2 points keep it quick
OPEN = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=0.0, box_nms_thresh=0.99,
            max_regions=2)
OPEN_ARGS = ["--everything", "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
             "--min-area", "0", "--box-nms-thresh", "0.99", "--max-regions", "2"]
# the regions of the manifest run, by image: a box, points, a mask, and a box that misses its image
GOOD = {
    "a.png": [{"box": [4, 6, 40, 30]}, {"points": [[20, 20], [50, 40]], "labels": [1, 0]}],
    "sub/b.png": [{"mask": "masks/b.png"}],
    "c.png": [{"box": [1, 1, 60, 45]}],
}
BAD = {
    "corrupt.png": [{"box": [4, 6, 40, 30]}],
    "missing.png": [{"box": [4, 6, 40, 30]}],
    "outside.png": [{"box": [100, 100, 140, 140]}],
}


def _image(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)


def _images(folder, names) -> None:
    for seed, name in enumerate(names):
        _image(folder / name, seed)


def _manifest_folder(folder):
    """The images and mask of GOOD and BAD (the corrupt one is junk bytes, the missing one is not written)."""
    _images(folder, [*GOOD, "outside.png"])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:30, 12:44] = 255
    (folder / "masks").mkdir()
    Image.fromarray(mask).save(folder / "masks" / "b.png")
    return folder


def _write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _rows(out, fmt="parquet") -> list[dict]:
    if fmt == "parquet":
        return ds.dataset(out).to_table().to_pylist()
    return [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


def _by_id(rows) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["id"], []).append(row)
    return {k: sorted(v, key=lambda r: -1 if r["region"] is None else r["region"]) for k, v in grouped.items()}


def _assert_rows_match(rows, results, prompts) -> None:
    """An image's output rows against `PAM.describe` (or `describe_everything`) results for it."""
    assert [r["region"] for r in rows] == list(range(len(results)))
    for row, result, prompt in zip(rows, results, prompts):
        assert json.loads(row["prompt"]) == prompt
        assert {k[5:]: v for k, v in row.items() if k.startswith("text_")} == result.texts
        assert {k: row[k] for k in result.fields} == result.fields
        assert np.array_equal(rle_to_mask(json.loads(row["mask_rle"])), result.mask)
        assert row["box"] == list(result.box)
        assert row["mask_score"] == pytest.approx(result.mask_score, rel=1e-5)
        assert row["object_score"] == pytest.approx(result.object_score, rel=1e-5)
        assert row["error"] is None and row["lang"] == "en" and row["model"] == "checkpoint"


# ------------------------------------------------------------------------ one manifest run, several checks

@pytest.fixture(scope="module")
def manifest_run(tmp_path_factory):
    """A JSONL manifest with good and bad images, described in 2 images per part (pam_core.cli.main in-process)."""
    if not CHECKPOINT.is_dir():
        pytest.skip("golden fixture is absent")
    folder = _manifest_folder(tmp_path_factory.mktemp("manifest"))
    records = [{"image": name, "regions": regions} for name, regions in {**GOOD, **BAD}.items()]
    records[1]["id"] = "b"  # an explicit id; the others default to the path
    _write_jsonl(folder / "images.jsonl", records)
    out = folder / "out"
    code = main([str(a) for a in ["describe-dataset", folder / "images.jsonl", "--out", out, *MODEL_ARGS,
                                  *TASK_ARGS, "--part-size", "2"]])
    return folder, out, code


@needs_fixture
def test_manifest_rows_equal_per_image_describe(manifest_run, pam):
    folder, out, code = manifest_run
    assert code == 0
    assert (out / "_SUCCESS").exists() and not (out / "_journal").exists()
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 3  # 6 images, 2 per part
    for part in parts:  # every part has the one explicit schema, whatever rows it holds
        assert pq.read_schema(part).remove_metadata() == output_schema(TASKS)
    table = ds.dataset(out).to_table()
    assert table.schema.remove_metadata() == output_schema(TASKS)
    rows = _by_id(table.to_pylist())
    assert sorted(rows) == sorted(["a.png", "b", "c.png", *BAD])
    for name, regions in GOOD.items():
        image_id = "b" if name == "sub/b.png" else name
        resolved = [{"mask": str(folder / r["mask"])} if "mask" in r else r for r in regions]
        results = pam.describe(folder / name, resolved, task=TASKS, generation=FAST)
        assert {r["image"] for r in rows[image_id]} == {str(folder / name)}
        _assert_rows_match(rows[image_id], results, regions)


@needs_fixture
def test_rows_read_back_are_the_describe_results(manifest_run, pam):
    """`result_from_rows` (how a host takes rows a Ray run wrote) gives back what `describe` gave."""
    folder, out, _ = manifest_run
    rows = _by_id(ds.dataset(out).to_table().to_pylist())
    back = result_from_rows(rows["a.png"])
    assert back.ok and back.id == "a.png"
    for got, want in zip(back.regions, pam.describe(folder / "a.png", GOOD["a.png"], task=TASKS, generation=FAST),
                         strict=True):
        assert (got.index, got.prompt, got.box, got.lang) == (want.index, want.prompt, want.box, want.lang)
        assert np.array_equal(got.mask, want.mask) and got.texts == want.texts and got.fields == want.fields
        assert (got.mask_score, got.object_score) == (want.mask_score, want.object_score)
    failed = result_from_rows(rows["missing.png"])
    assert not failed.ok and failed.regions == [] and "missing.png" in failed.error


@needs_fixture
def test_bad_images_are_error_rows_and_the_run_goes_on(manifest_run):
    folder, out, code = manifest_run
    assert code == 0
    rows = _by_id(_rows(out))
    errors = {image_id: r[0]["error"] for image_id, r in rows.items() if r[0]["error"] is not None}
    assert sorted(errors) == sorted(BAD) and all(len(rows[i]) == 1 for i in BAD)
    assert "cannot read image" in errors["corrupt.png"] and str(folder / "corrupt.png") in errors["corrupt.png"]
    assert errors["missing.png"] == f"image file not found: {folder / 'missing.png'}"
    assert "lies entirely outside the 64x48 image" in errors["outside.png"]
    for row in (rows[i][0] for i in BAD):
        assert row["region"] is None and row["mask_rle"] is None and row["text_category"] is None
    assert all(r["error"] is None for name in ("a.png", "b", "c.png") for r in rows[name])  # the others ran


@needs_fixture
def test_same_command_again_describes_nothing(manifest_run, pam_cli):
    folder, out, _ = manifest_run
    parts = {p.name: p.read_bytes() for p in out.glob("part-*")}
    proc = pam_cli("describe-dataset", folder / "images.jsonl", "--out", out, *MODEL_ARGS, *TASK_ARGS,
                   "--part-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "6 described earlier, 0 to describe" in proc.stderr and "loading PAM" not in proc.stderr
    assert {p.name: p.read_bytes() for p in out.glob("part-*")} == parts and (out / "_SUCCESS").exists()
    # other settings would mix rows of two kinds: refused, and the finished output is left as it was
    error = pam_cli.error("describe-dataset", folder / "images.jsonl", "--out", out, *MODEL_ARGS, "--task", "brief")
    assert "other settings" in error and "tasks: ['category', 'definition'] then, ['brief'] now" in error
    assert (out / "_SUCCESS").exists()


# ---------------------------------------------------------------------------------- other sources, JSONL

@needs_fixture
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_csv_and_parquet_manifests_give_the_jsonl_manifests_rows(manifest_run, pam_cli, kind, tmp_path):
    folder, jsonl_out, _ = manifest_run
    names = ["a.png", "sub/b.png"]
    manifest = folder / f"two.{kind}"
    if kind == "csv":  # regions as JSON text; no id column: ids default to the paths
        with open(manifest, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["image", "regions", "note"])
            writer.writerows([[name, json.dumps(GOOD[name]), "an extra column"] for name in names])
    else:  # regions as a list of structs, as Parquet writers store them
        pq.write_table(pa.Table.from_pylist([{"image": name, "regions": GOOD[name]} for name in names]), manifest)
    proc = pam_cli("describe-dataset", manifest, "--out", tmp_path / "out", *MODEL_ARGS, *TASK_ARGS)
    assert proc.returncode == 0, proc.stderr
    rows, expected = _by_id(_rows(tmp_path / "out")), _by_id(_rows(jsonl_out))
    assert sorted(rows) == sorted(names)
    for name, image_id in zip(names, ["a.png", "b"]):
        assert [{k: v for k, v in r.items() if k != "id"} for r in rows[name]] == \
               [{k: v for k, v in r.items() if k != "id"} for r in expected[image_id]]


@pytest.mark.slow
@needs_fixture
def test_folder_everything_in_jsonl(pam, pam_cli, tmp_path):
    folder = tmp_path / "photos"
    _images(folder, ["x.png", "deeper/y.JPG", ".hidden/z.png", "._x.png"])
    (folder / "notes.txt").write_text("not an image")
    proc = pam_cli("describe-dataset", folder, "--out", tmp_path / "out", "--format", "jsonl", *MODEL_ARGS,
                   *OPEN_ARGS, *TASK_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "_SUCCESS").exists() and not list((tmp_path / "out").glob("*.parquet"))
    rows = _by_id(_rows(tmp_path / "out", "jsonl"))
    assert sorted(rows) == ["deeper/y.JPG", "x.png"]  # recursive, image extensions, hidden names skipped
    as_arrow = ds.dataset(tmp_path / "out", format="json", schema=output_schema(TASKS)).to_table().to_pylist()
    assert _by_id(as_arrow) == rows  # what docs/cli.md shows
    for image_id in rows:
        results = pam.describe_everything(folder / image_id, task=TASKS, generation=FAST,
                                          auto=AutoMaskSettings(**OPEN))
        assert results, "the open thresholds find regions"
        _assert_rows_match(rows[image_id], results, [{"auto": True}] * len(results))


@pytest.mark.slow
@needs_fixture
def test_glob_source_and_images_without_objects(pam_cli, tmp_path):
    _images(tmp_path, ["one.png", "two.png", "three.jpg", "sub/four.png"])
    pattern = str(tmp_path / "**" / "*.png")
    # nothing is as large as the whole image: every image gets one row with no region, and counts as finished
    proc = pam_cli("describe-dataset", pattern, "--out", tmp_path / "out", *MODEL_ARGS, *OPEN_ARGS,
                   "--min-area", "1.0")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(tmp_path / "out")
    assert sorted(r["id"] for r in rows) == sorted(str(tmp_path / n) for n in ["one.png", "two.png", "sub/four.png"])
    assert all(r["region"] is None and r["error"] is None and r["text_category"] is None for r in rows)
    assert (tmp_path / "out" / "_SUCCESS").exists()


# ------------------------------------------------------------------------------ interrupted and killed runs

def _many(tmp_path, count: int):
    """A manifest of `count` images with one box each."""
    _images(tmp_path, [f"im{i:02d}.png" for i in range(count)])
    _write_jsonl(tmp_path / "many.jsonl", [{"image": f"im{i:02d}.png", "regions": [{"box": [2, 2, 50, 40]}]}
                                           for i in range(count)])
    return tmp_path / "many.jsonl"


def _child(manifest, out, stderr, start=subprocess.Popen):
    """A run in a child process. One decoding row at a time, so that images finish one by one (decoded together,
    they all finish in the same step, and there is no moment between them to stop the run at)."""
    command = [sys.executable, "-m", "pam_core.cli", "describe-dataset", manifest, "--out", out, *MODEL_ARGS,
               "--part-size", "2", "--max-batch", "1"]
    return start([str(a) for a in command], stdout=subprocess.DEVNULL, stderr=stderr)


def _journal_lines(out) -> list[bytes]:
    return [line for journal in sorted((out / "_journal").glob("*.jsonl"))
            for line in journal.read_bytes().split(b"\n")[:-1]]


def _wait_for(child, condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert child.poll() is None, f"the run ended (status {child.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def _assert_complete_once(out, count: int) -> None:
    rows = _rows(out)
    assert Counter(r["id"] for r in rows) == {f"im{i:02d}.png": 1 for i in range(count)}
    assert all(r["error"] is None for r in rows) and (out / "_SUCCESS").exists()


@pytest.mark.slow
@needs_fixture
def test_sigkill_loses_only_images_in_flight(pam_cli, tmp_path):
    manifest, out = _many(tmp_path, 10), tmp_path / "out"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        child = _child(manifest, out, stderr)
        try:  # killed with a part written and a finished image in the journal
            _wait_for(child, lambda: list(out.glob("part-*.parquet")) and _journal_lines(out),
                      "a part and a journal line")
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
    parts = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    journals = list((out / "_journal").glob("*.jsonl"))  # none if the kill came just after a part was written
    assert len(journals) <= 1
    journal_ids = [json.loads(line)["id"] for line in _journal_lines(out)]
    finished = len(journal_ids) + sum(pq.read_metadata(out / name).num_rows for name in parts)
    assert 2 <= finished < 10 and not (out / "_SUCCESS").exists()

    proc = pam_cli("describe-dataset", manifest, "--out", out, *MODEL_ARGS, "--part-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"recovered {len(journal_ids)} image(s)" in proc.stderr
    assert f"{finished} described earlier, {10 - finished} to describe" in proc.stderr
    assert all((out / name).read_bytes() == data for name, data in parts.items())  # never rewritten
    for journal in journals:  # the killed run's journal became the part of its name
        recovered = out / f"part-{journal.stem}.parquet"
        assert pq.read_table(recovered, columns=["id"]).column("id").to_pylist() == journal_ids
    _assert_complete_once(out, 10)


@pytest.mark.slow
@needs_fixture
def test_ctrl_c_keeps_finished_images(pam_cli, tmp_path):
    manifest, out = _many(tmp_path, 8), tmp_path / "out"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        child = _child(manifest, out, stderr, start=interruptible)
        try:
            _wait_for(child, lambda: _journal_lines(out), "a finished image")
            child.send_signal(signal.SIGINT)
            assert child.wait(timeout=120) == 130
        finally:
            if child.poll() is None:
                child.kill()
    assert "pam: interrupted" in (tmp_path / "stderr.txt").read_text()
    assert not (out / "_journal").exists() and not (out / "_SUCCESS").exists()  # the journal became a part
    kept = [r["id"] for r in _rows(out)]
    assert 1 <= len(kept) < 8 and len(set(kept)) == len(kept)

    proc = pam_cli("describe-dataset", manifest, "--out", out, *MODEL_ARGS, "--part-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(kept)} described earlier, {8 - len(kept)} to describe" in proc.stderr
    _assert_complete_once(out, 8)


# ------------------------------------------------------------------- the output folder without a model

def test_recovery_drops_a_torn_line_and_never_rewrites_a_part(tmp_path):
    """Journals left by killed runs: complete lines become the part of the journal's name; a journal whose part
    exists was converted already and is only removed."""
    settings = {"tasks": ["category"]}
    with DatasetOutput(tmp_path, ["category"], "parquet", settings, part_images=2) as output:
        output.add("done-1", [{"id": "done-1", "image": "1.png", "text_category": "cat"}])
    [written] = tmp_path.glob("part-*.parquet")
    journals = tmp_path / "_journal"
    journals.mkdir()
    line = lambda i: json.dumps({"id": i, "rows": [{"id": i, "image": f"{i}.png"}]}) + "\n"  # noqa: E731
    (journals / "killed-00000.jsonl").write_text(line("k1") + line("k2") + line("torn")[:20])
    (journals / f"{written.stem[5:]}.jsonl").write_text(line("done-1"))  # its part exists already
    before = written.read_bytes()

    with DatasetOutput(tmp_path, ["category"], "parquet", settings) as output:
        assert output.recovered == 2 and output.finished == {"done-1", "k1", "k2"}
    assert written.read_bytes() == before and not journals.exists()
    assert pq.read_table(tmp_path / "part-killed-00000.parquet").column("id").to_pylist() == ["k1", "k2"]
    assert ds.dataset(tmp_path).to_table().num_rows == 3


def test_one_run_at_a_time_and_the_same_settings(tmp_path):
    with DatasetOutput(tmp_path, ["category"], "parquet", {"lang": "en"}):
        with pytest.raises(DatasetError, match="another pam describe-dataset run is writing"):
            DatasetOutput(tmp_path, ["category"], "parquet", {"lang": "en"}).__enter__()
    with pytest.raises(DatasetError, match="format: 'parquet' then, 'jsonl' now"):
        DatasetOutput(tmp_path, ["category"], "jsonl", {"lang": "en"}).__enter__()
    with DatasetOutput(tmp_path, ["category"], "parquet", {"lang": "en"}) as output:  # the lock was released
        assert output.finished == set()


# ------------------------------------------------------------- malformed sources fail before the model loads

NO_MODEL = ["--model", "/nonexistent/pam", "--sam2", "/nonexistent/sam2.pt", "--local-files-only"]
ROW = {"image": "a.png", "regions": [{"box": [1, 2, 30, 40]}]}


@pytest.mark.parametrize("bad, message", [
    ("{not json", "images.jsonl line 3: the row is not valid JSON"),
    ({"regions": [{"box": [1, 2, 3, 4]}]}, "images.jsonl line 3: 'image' must be a path"),
    ({"image": "c.png", "regions": [{"box": [1, 2, 3]}]}, "line 3: region 1: a box needs 4 numbers"),
    ({"image": "c.png", "regions": [{"box": [1, 2, 30, 40]}, {"points": [[1, 2]], "labels": [1, 0]}]},
     "line 3: region 2: 1 points but 2 labels"),
    ({"image": "c.png", "regions": [{"mask": "nowhere.png"}]}, "line 3: region 1: mask file not found"),
    ({"image": "c.png", "regions": [{"polygon": [1, 2]}]}, "line 3: region 1: unknown keys ['polygon']"),
    ({"image": "c.png", "regions": {"box": [1, 2, 3, 4]}}, "line 3: 'regions' must be a list"),
    ({"image": "c.png"}, "line 3: the row has no regions; give them in 'regions'"),
    ({"image": "c.png", "id": "a.png", "regions": [{"box": [1, 2, 30, 40]}]},
     "images.jsonl line 3: id 'a.png' is already used by"),
])
def test_malformed_manifest_row_names_its_line(pam_cli, tmp_path, bad, message):
    lines = [json.dumps(ROW), json.dumps({**ROW, "image": "b.png"}), bad if isinstance(bad, str) else json.dumps(bad)]
    (tmp_path / "images.jsonl").write_text("\n".join(lines) + "\n")
    error = pam_cli.error("describe-dataset", tmp_path / "images.jsonl", "--out", tmp_path / "out", *NO_MODEL)
    assert message in error
    if "already used" in message:  # names both lines
        assert error.endswith(f"already used by {tmp_path / 'images.jsonl'} line 1; ids must be unique "
                              "(give each row its own 'id')")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_every_malformed_row_is_listed_in_one_run(pam_cli, tmp_path):
    """A large manifest is fixed in one pass: the first LISTED_PROBLEMS bad rows above the one-line error."""
    from pam_core.datasets.sources import LISTED_PROBLEMS

    bad = [json.dumps({"image": f"{n}.png", "regions": [{"box": [1, 2, 3]}]}) for n in range(LISTED_PROBLEMS + 5)]
    lines = [json.dumps(ROW), "{not json", *bad, json.dumps(ROW)]
    (tmp_path / "images.jsonl").write_text("\n".join(lines) + "\n")
    proc = pam_cli("describe-dataset", tmp_path / "images.jsonl", "--out", tmp_path / "out", *NO_MODEL)
    error = pam_cli.error("describe-dataset", tmp_path / "images.jsonl", "--out", tmp_path / "out", *NO_MODEL)
    listed = proc.stderr.splitlines()[:-1]
    manifest = tmp_path / "images.jsonl"
    assert listed[0] == f"{manifest} line 2: the row is not valid JSON: Expecting property name enclosed in double " \
                        "quotes: line 1 column 2 (char 1)"
    assert listed[1:] == [f"{manifest} line {n}: region 1: a box needs 4 numbers x0,y0,x1,y1, got 3"
                          for n in range(3, 3 + LISTED_PROBLEMS - 1)]
    # the last row repeats the first one's id; it is counted, past the listed ones
    assert error == f"pam: error: {listed[0]} (and {LISTED_PROBLEMS + 6} more malformed row(s))"
    assert not (tmp_path / "out").exists()


def test_malformed_csv_and_parquet_rows_and_sources(pam_cli, tmp_path):
    (tmp_path / "m.csv").write_text('image,regions\na.png,"[{""box"": [1, 2, 30, 40]}]"\nb.png,"[{""box"": [1, 2"\n')
    assert "m.csv line 3: 'regions' is not valid JSON" in pam_cli.error(
        "describe-dataset", tmp_path / "m.csv", "--out", tmp_path / "out", *NO_MODEL)
    pq.write_table(pa.Table.from_pylist([ROW, {"image": None, "regions": ROW["regions"]}]), tmp_path / "m.parquet")
    assert "m.parquet row 2: 'image' must be a path" in pam_cli.error(
        "describe-dataset", tmp_path / "m.parquet", "--out", tmp_path / "out", *NO_MODEL)
    _images(tmp_path / "folder", ["a.png"])
    assert "run with --everything" in pam_cli.error("describe-dataset", tmp_path / "folder", "--out",
                                                    tmp_path / "out", *NO_MODEL)
    assert "glob" in pam_cli.error("describe-dataset", str(tmp_path / "*.webp"), "--out", tmp_path / "out",
                                   "--everything", *NO_MODEL)
    assert "SOURCE not found" in pam_cli.error("describe-dataset", tmp_path / "nowhere", "--out", tmp_path / "out",
                                               *NO_MODEL)
    assert "read_threads and lookahead must be >= 1" in pam_cli.error(
        "describe-dataset", tmp_path / "m.csv", "--out", tmp_path / "out", "--read-threads", "0", *NO_MODEL)
    # the worker options belong to a Ray run
    assert "--workers, --gpus-per-worker set(s) the workers of a Ray run: add --ray local" in pam_cli.error(
        "describe-dataset", tmp_path / "m.csv", "--out", tmp_path / "out", "--workers", "2", "--gpus-per-worker", "1",
        *NO_MODEL)
    assert "Ray is not installed: pip install 'pam-suite[ray]'" in _without_ray(
        "describe-dataset", tmp_path / "m.csv", "--out", tmp_path / "out", "--ray", "local")
    # a model path missing on this machine ends a local Ray run before Ray starts: one line, no worker tracebacks
    (tmp_path / "ok.jsonl").write_text(json.dumps(ROW) + "\n")
    assert pam_cli.error("describe-dataset", tmp_path / "ok.jsonl", "--out", tmp_path / "ray-out", "--ray", "local",
                         *NO_MODEL[:4]).endswith("PAM checkpoint folder not found: /nonexistent/pam")
    assert "workers and the Ray batch size must be >= 1, got 0" in pam_cli.error(
        "describe-dataset", tmp_path / "m.csv", "--out", tmp_path / "out", "--ray", "local", "--workers", "0",
        *NO_MODEL)


def _without_ray(*args) -> str:
    """`pam ARGS` in a Python where `import ray` fails: the last stderr line, after checking it is the only error."""
    argv = list(map(str, args))
    code = f"import sys; sys.modules['ray'] = None; from pam_core.cli import main; sys.exit(main({argv!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]
