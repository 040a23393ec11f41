"""Image runs of the FiftyOne plugin through pam_core's streaming engine, against a real mongod: the labels are what
`PAM.describe` gives each image, samples are saved in bulk, an interrupted or SIGKILLed run resumes writing each
sample exactly once, and missing `metadata` is filled as FiftyOne's `compute_metadata` fills it."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import numpy as np
import pymongo.collection
import pytest
from PIL import Image

from fiftyone_plugin import apply_pam, core
from fiftyone_plugin.core import ImageRequest, describe_sample, run_pam
from helpers import CHECKPOINT, FIXTURE, REPO, SAM2, needs_fixture
from pam_core import AutoMaskSettings, GenerationSettings

pytestmark = [pytest.mark.host, needs_fixture]
FAST = GenerationSettings(max_new_tokens=4)
TASKS = ("category", "detailed")
IMAGE = FIXTURE / "inputs" / "image.png"  # 640x480
# Red rectangle and green disc of the fixture image, relative [x, y, w, h]; the mirrored copy has the rectangle
# at the bottom.
RECTANGLE, DISC = [0.125, 0.25, 0.28125, 0.4375], [0.5625, 0.125, 0.3125, 0.375]
FLIPPED_RECTANGLE = [0.125, 0.3125, 0.28125, 0.4375]


def boxes(*relative_boxes, labels=None) -> fo.Detections:
    labels = labels or [f"shape {i}" for i in range(len(relative_boxes))]
    return fo.Detections(detections=[fo.Detection(label=label, bounding_box=box)
                                     for label, box in zip(labels, relative_boxes)])


@pytest.fixture
def shapes(tmp_path):
    """The fixture image and a copy mirrored top to bottom."""
    first, second = tmp_path / "shapes.png", tmp_path / "mirrored.png"
    shutil.copy(IMAGE, first)
    Image.open(first).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(second)
    return first, second


def assert_labels_are_per_image(sample, expected: fo.Detections) -> None:
    """The sample's PAM labels are the per-image path's (`describe_sample`: one `PAM.describe` or
    `describe_everything` call on the image): every attribute, every text, every mask."""
    def content(label):
        return [{k: v for k, v in d.to_dict().items() if k != "_id"} for d in label.detections]

    assert len(sample.pam.detections) == len(expected.detections) >= 1
    assert content(sample.pam) == content(expected)
    for streamed, alone in zip(sample.pam.detections, expected.detections):
        assert np.array_equal(streamed.mask, alone.mask)


def test_streamed_labels_are_what_describe_gives_each_image(pam, shapes):
    """Several images in one stream, prompts of different counts and a mask prompt: each sample's labels equal
    one `describe` call on its image with the same regions."""
    mask = np.zeros((480, 640), bool)
    mask[300:450, 330:600] = True
    dataset = fo.Dataset("pam-stream-identity", overwrite=True)
    dataset.add_samples([
        fo.Sample(filepath=str(shapes[0]), ground_truth=boxes(RECTANGLE, DISC)),
        fo.Sample(filepath=str(shapes[1]), ground_truth=boxes(FLIPPED_RECTANGLE)),
        fo.Sample(filepath=str(shapes[0]), ground_truth=fo.Detections(detections=[
            fo.Detection.from_mask(mask, label="triangle"), fo.Detection(label="disc", bounding_box=DISC)])),
    ])
    summary = apply_pam(dataset, prompt_field="ground_truth", tasks=TASKS, model=pam, generation=FAST)
    assert (summary["samples"], summary["failed"], summary["regions"]) == (3, 0, 5)
    request = ImageRequest.of(TASKS, "en", FAST, AutoMaskSettings())
    for sample in dataset:
        assert_labels_are_per_image(sample, describe_sample(pam, sample.filepath, sample.ground_truth, request, "PAM"))
        assert [d.prompt_label for d in sample.pam.detections] == [d.label for d in sample.ground_truth.detections]


def test_streamed_everything_is_what_describe_everything_gives_each_image(pam, shapes):
    auto = AutoMaskSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, max_regions=2)
    dataset = fo.Dataset("pam-stream-everything", overwrite=True)
    dataset.add_samples([fo.Sample(filepath=str(path)) for path in shapes])
    apply_pam(dataset, tasks=TASKS, model=pam, generation=FAST, auto=auto)
    request = ImageRequest.of(TASKS, "en", FAST, auto)
    for sample in dataset:
        assert_labels_are_per_image(sample, describe_sample(pam, sample.filepath, False, request, "PAM"))


@pytest.fixture
def bulk_writes(monkeypatch):
    """The number of documents in every bulk write to a samples collection (the writes still happen)."""
    sizes = []
    original = pymongo.collection.Collection.bulk_write

    def counting_bulk_write(self, requests, *args, **kwargs):
        requests = list(requests)
        if self.name.startswith("samples."):  # not frames.samples.*, not FiftyOne's own collections
            sizes.append(len(requests))
        return original(self, requests, *args, **kwargs)

    monkeypatch.setattr(pymongo.collection.Collection, "bulk_write", counting_bulk_write)
    return sizes


def test_samples_are_saved_in_bulk_and_an_interrupted_run_writes_each_sample_once(pam, shapes, bulk_writes,
                                                                                 monkeypatch):
    monkeypatch.setattr(core, "BATCH_SIZE", 2)
    dataset = fo.Dataset("pam-stream-bulk", overwrite=True)
    dataset.add_samples([fo.Sample(filepath=str(shapes[i % 2]), ground_truth=boxes(DISC)) for i in range(5)])
    steps = run_pam(dataset, prompt_field="ground_truth", tasks="category", model=pam, generation=FAST)
    assert [next(steps) for _ in range(4)] == [(0, 5), (1, 5), (2, 5), (3, 5)]
    steps.close()  # stopped after 3 samples: two went in one write, the third is saved as the run stops
    assert bulk_writes == [2, 1] and len(dataset.exists("pam")) == 3

    summary = apply_pam(dataset, prompt_field="ground_truth", tasks="category", model=pam, generation=FAST)
    assert (summary["skipped"], summary["samples"]) == (3, 2)
    # 5 updates in all for 5 labelled samples: each sample was written once, none twice
    assert bulk_writes == [2, 1, 2] and len(dataset.exists("pam")) == 5
    assert dataset.count("pam.detections") == 5 and dataset.distinct("pam_error") == []


@pytest.mark.slow
def test_a_sigkilled_run_resumes_and_never_rewrites_what_it_saved(pam, tmp_path):
    """A run killed with SIGKILL (no cleanup of any kind) loses only the samples it had not saved; the next run, on a
    Dataset object loaded before the killed run declared its fields, does exactly those, and the saved ones are not
    written again."""
    count, tokens = 16, 4  # far more than the child finishes between two looks at the database
    dataset = fo.Dataset("pam-stream-killed", overwrite=True)
    dataset.persistent = True  # shared with the child process
    dataset.add_samples([fo.Sample(filepath=str(IMAGE), ground_truth=boxes(RECTANGLE)) for _ in range(count)])
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("killed_run_case.py")), dataset.name,
                              str(CHECKPOINT), str(SAM2), str(tokens)], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while len(dataset.exists("pam")) < 2 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
        saved = dict(zip(*dataset.exists("pam").values(["id", "last_modified_at"])))
        assert 2 <= len(saved) < count  # killed after its first write and before its last
        assert len(saved) % 2 == 0  # whole bulk writes of 2 samples: the finished samples not saved yet are lost
        # `dataset` was loaded before the child declared its fields: the run must see them, not redo every sample

        summary = apply_pam(dataset, prompt_field="ground_truth", tasks="category", model=pam, max_new_tokens=tokens)
        assert (summary["skipped"], summary["samples"], summary["failed"]) == (len(saved), count - len(saved), 0)
        after = dict(zip(*dataset.values(["id", "last_modified_at"])))
        assert all(after[i] == saved[i] for i in saved)  # what the killed run saved was not written again
        assert dataset.count("pam.detections") == count  # one label per sample: nothing doubled
        assert len(set(dataset.values("pam.detections.label", unwind=True))) == 1  # the same image, the same text
    finally:
        if child.poll() is None:
            child.kill()
        dataset.delete()


def test_metadata_is_filled_where_missing_as_compute_metadata_fills_it(pam, shapes, tmp_path):
    """FiftyOne's own metadata (channels and MIME type from the file, a rotating EXIF orientation swapping width
    and height) for samples without it, including one PAM could not read; existing metadata is kept."""
    gray, rotated = tmp_path / "gray.png", tmp_path / "rotated.jpg"
    Image.open(shapes[0]).convert("L").save(gray)
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees, so FiftyOne swaps width and height
    Image.open(shapes[0]).convert("RGB").save(rotated, exif=exif)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(shapes[0].read_bytes()[:200])
    given = fo.ImageMetadata(width=1, height=2, size_bytes=3, mime_type="image/x-given", num_channels=4)
    dataset = fo.Dataset("pam-stream-metadata", overwrite=True)
    dataset.add_samples([fo.Sample(filepath=str(path), ground_truth=boxes(RECTANGLE))
                         for path in (shapes[0], gray, rotated, truncated)])
    dataset.add_sample(fo.Sample(filepath=str(shapes[1]), ground_truth=boxes(RECTANGLE), metadata=given))
    reference = dataset.clone("pam-stream-metadata-reference")
    reference.compute_metadata()

    summary = apply_pam(dataset, prompt_field="ground_truth", tasks="category", model=pam, generation=FAST)
    assert summary["failed"] == 1 and dataset.exists("pam_error").values("filepath") == [str(truncated)]
    filled = dict(zip(*dataset.values(["filepath", "metadata"])))
    expected = dict(zip(*reference.values(["filepath", "metadata"])))
    for path in (shapes[0], gray, rotated, truncated):
        assert filled[str(path)] is not None and filled[str(path)].to_dict() == expected[str(path)].to_dict(), path
    assert (filled[str(gray)].num_channels, filled[str(rotated)].width, filled[str(rotated)].height) == (1, 480, 640)
    assert filled[str(shapes[1])].to_dict() == given.to_dict()  # never replaced
    reference.delete()
