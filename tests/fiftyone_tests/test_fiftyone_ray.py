"""`apply_pam(..., backend="ray")` on a real Ray started in the test process: the labels of the local backend for
box prompts, describe-everything and concepts, an unreadable image recorded as such, a second run skipping
everything; and the refusals (videos, a loaded model, Ray options without backend="ray", Ray missing)."""

import os
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from fiftyone_plugin import apply_pam
from helpers import CHECKPOINT, FIXTURE, REPO, SAM2, needs_fixture
from pam_core import AutoMaskSettings

pytestmark = [pytest.mark.host, needs_fixture]
SOURCE = FIXTURE / "inputs" / "image.png"
MODEL = dict(model=str(CHECKPOINT), sam2=str(SAM2), device="cpu", local_files_only=True, max_new_tokens=4)
CHEAP_AUTO = AutoMaskSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, max_regions=2)


@pytest.fixture
def images(tmp_path):
    """Five small different images and a truncated file."""
    paths = []
    for i in range(5):
        image = Image.open(SOURCE).convert("RGB").rotate(0, translate=(i * 9, i * 4)).resize((320, 240))
        paths.append(tmp_path / f"image_{i}.png")
        image.save(paths[-1])
    broken = tmp_path / "broken.png"
    broken.write_bytes(paths[0].read_bytes()[:200])
    return paths + [broken]


def boxes_dataset(paths, name):
    dataset = fo.Dataset(name, overwrite=True)
    box = fo.Detection(label="rectangle", bounding_box=[80 / 640, 120 / 480, 180 / 640, 210 / 480])
    point = fo.Keypoint(label="disc", points=[(460 / 640, 150 / 480)])
    dataset.add_samples([fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=[box]),
                                   points=fo.Keypoints(keypoints=[point])) for path in paths])
    return dataset


def labels(dataset, field="pam"):
    """Every sample's regions as (label, caption-like texts, box, mask pixels), and its error, by file."""
    out = {}
    for sample in dataset.select_fields([field, f"{field}_error"]):
        regions = [(d.label, d.get_attribute_value("prompt_label", None), d.get_attribute_value("concept", None),
                    tuple(np.round(d.bounding_box, 6)), int(np.asarray(d.mask).sum()))
                   for d in (sample[field].detections if sample[field] else [])]
        out[sample.filepath] = regions, sample[f"{field}_error"] is not None
    return out


@pytest.mark.slow
def test_a_ray_run_labels_as_the_local_backend_and_resumes(images):
    dataset = boxes_dataset(images, "pam-ray")
    reference = dataset.clone("pam-ray-local")
    apply_pam(reference, prompt_field="ground_truth", tasks="category", **MODEL)
    summary = apply_pam(dataset, prompt_field="ground_truth", tasks="category", backend="ray", ray_address="local",
                        workers=2, ray_batch=2, **MODEL)
    assert (summary["samples"], summary["failed"], summary["skipped"]) == (5, 1, 0), summary
    assert labels(dataset) == labels(reference)
    assert dataset.count("pam.detections") == 5 and dataset.info["pam_runs"] == reference.info["pam_runs"]
    for path in ("metadata.width", "metadata.height", "metadata.size_bytes", "metadata.mime_type"):
        assert None not in dataset.values(path) and dataset.values(path) == reference.values(path), path
    [error] = dataset.exists("pam_error").values("pam_error")
    assert error == reference.exists("pam_error").values("pam_error")[0]

    dataset.delete_samples(dataset.exists("pam_error"))  # (a failed sample would be tried again)
    written = dataset.values("last_modified_at")
    again = apply_pam(dataset, prompt_field="ground_truth", tasks="category", backend="ray", ray_address="local",
                      workers=2, **MODEL)
    assert (again["samples"], again["skipped"], again["failed"]) == (0, 5, 0)
    assert dataset.values("last_modified_at") == written


@pytest.fixture
def ray_session():
    """One Ray for several runs (apply_pam then uses the Ray already initialized), shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_describe_everything_points_and_concepts_on_ray(images, synthetic_sam3, ray_session):
    dataset = boxes_dataset(images[:2], "pam-ray-more")
    reference = dataset.clone("pam-ray-more-local")
    runs = [dict(label_field="pam_auto", auto=CHEAP_AUTO),
            dict(label_field="pam_points", prompt_field="points"),
            dict(label_field="pam_found", concepts=["object", "red shape"], find_threshold=0.0, max_instances=1,
                 sam3=str(synthetic_sam3))]
    for options in runs:
        apply_pam(reference, tasks="category", **options, **MODEL)
        apply_pam(dataset, tasks="category", backend="ray", workers=1, **options, **MODEL)
        assert labels(dataset, options["label_field"]) == labels(reference, options["label_field"]), options
        assert dataset.count(f"{options['label_field']}.detections") >= 2


def test_ray_backend_refusals(pam, images):
    dataset = boxes_dataset(images[:1], "pam-ray-refused")
    with pytest.raises(ValueError, match="give model= as a Hub id or a checkpoint folder"):
        apply_pam(dataset, prompt_field="ground_truth", model=pam, backend="ray")
    with pytest.raises(ValueError, match="workers, ray_address: only for backend='ray'"):
        apply_pam(dataset, prompt_field="ground_truth", workers=2, ray_address="local", **MODEL)
    with pytest.raises(ValueError, match="unknown backend 'spark'"):
        apply_pam(dataset, prompt_field="ground_truth", backend="spark", **MODEL)
    videos = fo.Dataset("pam-ray-videos", overwrite=True)
    videos.media_type = "video"
    with pytest.raises(ValueError, match="backend='ray' describes images"):
        apply_pam(videos, prompt_field="frames.gt", backend="ray", **MODEL)
    assert "pam" not in dataset.get_field_schema()


@pytest.mark.slow
def test_without_ray_one_line_names_the_extra(images, tmp_path):
    dataset = boxes_dataset(images[:1], "pam-ray-missing")
    dataset.persistent = True  # shared with the child
    script = ("import sys; sys.modules['ray'] = None\n"
              "import fiftyone as fo\nfrom fiftyone_plugin import apply_pam\n"
              f"apply_pam(fo.load_dataset({dataset.name!r}), prompt_field='ground_truth', backend='ray')")
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    finally:
        dataset.delete()
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        "pam_core.errors.SettingsError: Ray is not installed: pip install 'pam-suite[ray]'"
