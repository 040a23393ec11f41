"""Bad input gives a typed pam_core error in the API, and one `pam: error:` line with exit code 2 in the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import FIXTURE, needs_fixture
from pam_core import (
    PAM,
    CheckpointError,
    DeviceError,
    GenerationSettings,
    ImageError,
    PAMError,
    PromptError,
    Region,
    TaskError,
    WeightsNotFoundError,
)
from pam_core.tasks import resolve_task

IMAGE = FIXTURE / "inputs" / "image.png"
CHECKPOINT = FIXTURE / "checkpoint"
SAM2 = FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt"
WIDTH, HEIGHT = 640, 480
BOX = [70, 110, 270, 340]
FAST = GenerationSettings(max_new_tokens=4)
LOCAL = dict(sam2=SAM2, device="cpu", local_files_only=True)
CLI_MODEL = ["--model", str(CHECKPOINT), "--sam2", str(SAM2), "--device", "cpu", "--local-files-only",
             "--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def features(pam):
    return pam.encode(IMAGE)[1]


def _cli(pam_cli, out: Path, *args: str) -> str:
    """`pam describe ... --out OUT` in-process: bad input gives one error line (returned) and no results.json."""
    line = pam_cli.error("describe", *args, "--out", out)
    assert not (out / "results.json").exists(), "a failed run must not leave results.json"
    return line


@pytest.fixture
def model_loads(monkeypatch):
    """The ModelSources the CLI asks the loading path for (loaded or taken from its cache)."""
    from pam_core.loading import MODELS

    asked, get = [], MODELS.get

    def recording_get(source):
        asked.append(source)
        return get(source)

    monkeypatch.setattr(MODELS, "get", recording_get)
    return asked


def _checkpoint_copy(dst: Path, skip: tuple[str, ...] = (), config: dict | None = None) -> Path:
    """The fixture checkpoint in dst: small files copied, the safetensors shards symlinked."""
    dst.mkdir(parents=True)
    for src in CHECKPOINT.iterdir():
        if src.name in skip:
            continue
        if src.suffix == ".safetensors":
            (dst / src.name).symlink_to(src)
        else:
            shutil.copyfile(src, dst / src.name)
    if config is not None:
        data = json.loads((CHECKPOINT / "config.json").read_text())
        data.update(config)
        (dst / "config.json").write_text(json.dumps(data))
    return dst


def test_error_hierarchy():
    for cls in (ImageError, PromptError, TaskError, CheckpointError, WeightsNotFoundError, DeviceError):
        assert issubclass(cls, PAMError)
    assert issubclass(WeightsNotFoundError, CheckpointError) and issubclass(WeightsNotFoundError, FileNotFoundError)
    assert issubclass(PromptError, ValueError) and issubclass(ImageError, ValueError)


# ---------------------------------------------------------------- images

def _bad_images(tmp_path: Path) -> dict[str, Path]:
    random_bytes = tmp_path / "noise.png"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    data = IMAGE.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[:len(data) // 2])
    return {"missing": tmp_path / "does_not_exist.png", "unreadable": random_bytes, "truncated": truncated}


@needs_fixture
@pytest.mark.parametrize("case", ["missing", "unreadable", "truncated"])
def test_bad_image_api(pam, tmp_path, case):
    path = _bad_images(tmp_path)[case]
    with pytest.raises(ImageError) as info:
        pam.describe(path, [Region.from_box(BOX)], generation=FAST)
    assert str(path) in str(info.value)
    with pytest.raises(ImageError):
        pam.encode(str(path))


@needs_fixture
@pytest.mark.parametrize("case", ["missing", "unreadable", "truncated"])
def test_bad_image_cli(pam_cli, tmp_path, case):
    path = _bad_images(tmp_path)[case]
    line = _cli(pam_cli, tmp_path / "out", str(path), "--box", "70,110,270,340", *CLI_MODEL)
    assert str(path) in line
    assert not (tmp_path / "out").exists()  # the image is checked before anything is written


# ---------------------------------------------------------------- regions

def _empty_mask() -> np.ndarray:
    return np.zeros((HEIGHT, WIDTH), dtype=bool)


def _small_mask() -> np.ndarray:
    return np.ones((HEIGHT // 2, WIDTH // 2), dtype=bool)


BAD_REGIONS = {
    "box_outside": (lambda: Region.from_box([700, 10, 800, 100]), "outside"),
    "box_inverted": (lambda: Region.from_box([270, 110, 70, 340]), "inverted"),
    "mask_empty": (lambda: Region.from_mask(_empty_mask()), "empty"),
    "mask_wrong_size": (lambda: Region.from_mask(_small_mask()), "shape"),
    "points_labels_mismatch": (lambda: Region(points=((1, 2), (3, 4)), labels=(1,)), "labels"),
    "point_outside": (lambda: Region.from_points([[10, 900]]), "outside"),
    "point_label_2": (lambda: Region(points=((10.0, 10.0),), labels=(2,)), "label"),
    "nothing": (lambda: Region(), "needs"),
    "dict_unknown_key": (lambda: {"bbox": BOX}, "unknown"),
}


@needs_fixture
@pytest.mark.parametrize("case", list(BAD_REGIONS))
def test_bad_region_api(pam, features, case):
    make, fragment = BAD_REGIONS[case]
    with pytest.raises(PromptError, match=fragment):
        pam.analyze(features, make())


@needs_fixture
def test_describe_checks_every_region_before_generating(pam):
    progress = []
    with pytest.raises(PromptError, match="outside"):
        pam.describe(IMAGE, [Region.from_box(BOX), Region.from_box([700, 10, 800, 100])], generation=FAST,
                     progress=lambda *a: progress.append(a))
    assert progress == []  # nothing was generated for the good first region


def test_region_constructor_errors():
    with pytest.raises(PromptError):
        Region.from_box([1, 2, 3])
    with pytest.raises(PromptError):
        Region.from_box([0, 0, float("nan"), 10])
    with pytest.raises(PromptError):
        Region.from_points([[1, 2, 3]])
    with pytest.raises(PromptError):
        Region.from_mask(np.zeros((2, 3, 4)))


@needs_fixture
@pytest.mark.parametrize("case", ["box_outside", "box_inverted", "mask_empty", "mask_wrong_size"])
def test_bad_region_cli(pam_cli, tmp_path, model_loads, case):
    if case.startswith("mask"):
        mask = _empty_mask() if case == "mask_empty" else _small_mask()
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
        region = ["--mask", str(tmp_path / "mask.png")]
    else:
        region = ["--box", "700,10,800,100" if case == "box_outside" else "270,110,70,340"]
    out = tmp_path / "out"
    line = _cli(pam_cli, out, str(IMAGE), *region, *CLI_MODEL)
    assert BAD_REGIONS[case][1] in line
    assert model_loads == [], "regions are checked against the image before the model loads"
    assert not out.exists()


@needs_fixture
@pytest.mark.parametrize("points", [["--point", "10,10,2"], ["--point", "10,10"], ["--point", "a,b,1"]])
def test_bad_point_cli(pam_cli, tmp_path, points):
    line = _cli(pam_cli, tmp_path / "out", str(IMAGE), *points, *CLI_MODEL)
    assert "point" in line


@needs_fixture
def test_no_region_cli(pam_cli, tmp_path):
    line = _cli(pam_cli, tmp_path / "out", str(IMAGE), *CLI_MODEL)
    assert "--box" in line


# ---------------------------------------------------------------- tasks

def test_unknown_task_api():
    with pytest.raises(TaskError, match="categroy"):
        resolve_task("categroy")
    with pytest.raises(TaskError):
        resolve_task("category", lang="fr")
    with pytest.raises(TaskError):
        resolve_task("   ")
    free = resolve_task("Describe the colour of this subject.")
    assert free.name == "free" and free.instruction == "Describe the colour of this subject."


@needs_fixture
def test_unknown_task_describe(pam):
    with pytest.raises(TaskError, match="categroy"):
        pam.describe(IMAGE, [Region.from_box(BOX)], task="categroy", generation=FAST)


@needs_fixture
def test_unknown_task_cli(pam_cli, tmp_path):
    line = _cli(pam_cli, tmp_path / "out", str(IMAGE), "--box", "70,110,270,340", "--task", "categroy", *CLI_MODEL)
    assert "categroy" in line


# ---------------------------------------------------------------- checkpoints

@needs_fixture
def test_checkpoint_missing_tokenizer(pam_cli, tmp_path):
    folder = _checkpoint_copy(tmp_path / "ckpt", skip=("tokenizer.json",))
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        PAM.from_pretrained(folder, **LOCAL)
    line = _cli(pam_cli, tmp_path / "out", str(IMAGE), "--box", "70,110,270,340", *CLI_MODEL, "--model", str(folder))
    assert "tokenizer.json" in line


@needs_fixture
def test_checkpoint_missing_shard(tmp_path):
    folder = _checkpoint_copy(tmp_path / "ckpt", skip=("model-00002-of-00002.safetensors",))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        PAM.from_pretrained(folder, **LOCAL)


@needs_fixture
def test_checkpoint_of_another_model_type(pam_cli, tmp_path):
    folder = _checkpoint_copy(tmp_path / "ckpt", config={"model_type": "llama"})
    with pytest.raises(CheckpointError, match="model_type") as info:
        PAM.from_pretrained(folder, **LOCAL)
    assert "llama" in str(info.value)
    line = _cli(pam_cli, tmp_path / "out", str(IMAGE), "--box", "70,110,270,340", *CLI_MODEL, "--model", str(folder))
    assert "model_type" in line


@needs_fixture
def test_failed_cli_run_removes_stale_results(pam_cli, tmp_path):
    """Good image and region, a model folder that fails to load: the results.json of an earlier run goes."""
    folder = _checkpoint_copy(tmp_path / "ckpt", config={"model_type": "llama"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps([{"text": "from an earlier run"}]))
    line = _cli(pam_cli, out, str(IMAGE), "--box", "70,110,270,340", *CLI_MODEL, "--model", str(folder))
    assert "model_type" in line


@needs_fixture
def test_sam2_weights_that_do_not_fit_the_config(pam_cli, tmp_path):
    with pytest.raises(CheckpointError, match="sam2.1_hiera_t"):
        PAM.from_pretrained(CHECKPOINT, sam2_config="sam2.1_hiera_t", **LOCAL)
    line = _cli(pam_cli, tmp_path / "out", str(IMAGE), "--box", "70,110,270,340", *CLI_MODEL,
                "--sam2-config", "sam2.1_hiera_t")
    assert "sam2.1_hiera_t" in line


@needs_fixture
def test_sam2_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "sam2.1_hiera_bogus.pt"
    bogus.write_bytes(b"not a torch checkpoint")
    with pytest.raises(CheckpointError):
        PAM.from_pretrained(CHECKPOINT, sam2=bogus, sam2_config=FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.yaml",
                            device="cpu", local_files_only=True)


@pytest.fixture
def empty_offline_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants

    home = tmp_path / "hf_home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return home


def test_offline_missing_pam_hub_id(empty_offline_hub):
    with pytest.raises(WeightsNotFoundError) as info:
        PAM.from_pretrained("Perceive-Anything/PAM-1.5B", device="cpu")
    message = str(info.value)
    assert "hf download" in message and "PAM-1.5B" in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, CheckpointError)
    assert not any(empty_offline_hub.rglob("*.safetensors"))


@needs_fixture
def test_offline_missing_pam_hub_id_cli(pam_cli, tmp_path, empty_offline_hub):
    line = _cli(pam_cli, tmp_path / "out", str(IMAGE), "--box", "70,110,270,340", "--device", "cpu",
                "--model", "Perceive-Anything/PAM-1.5B")
    assert "hf download" in line and "PAM-1.5B" in line


@needs_fixture
def test_offline_missing_sam2_hub_id(pam_cli, tmp_path, empty_offline_hub):
    with pytest.raises(WeightsNotFoundError) as info:
        PAM.from_pretrained(CHECKPOINT, sam2="facebook/sam2.1-hiera-large", device="cpu")
    message = str(info.value)
    assert "hf download" in message and "sam2.1-hiera-large" in message and "sam2.1_hiera_large.pt" in message
    line = _cli(pam_cli, tmp_path / "out", str(IMAGE), "--box", "70,110,270,340", "--device", "cpu",
                "--model", str(CHECKPOINT), "--sam2", "facebook/sam2.1-hiera-large")
    assert "hf download" in line and "sam2.1-hiera-large" in line


@needs_fixture
def test_local_weights_are_checked_without_loading_and_hub_ids_left_to_the_loader(tmp_path, empty_offline_hub):
    """`check_local_weights` (what a Ray run on this machine checks before starting workers): a missing or incomplete
    local folder or file raises what loading would raise; Hub ids, in no cache here, pass (a worker may have them)."""
    from pam_core.checkpoint import check_local_weights

    check_local_weights(str(CHECKPOINT), str(SAM2))
    check_local_weights("Perceive-Anything/PAM-1.5B", "facebook/sam2.1-hiera-large", sam3="facebook/sam3")
    with pytest.raises(WeightsNotFoundError, match="PAM checkpoint folder not found: /nonexistent/pam"):
        check_local_weights("/nonexistent/pam", str(SAM2))
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="is missing config.json"):
        check_local_weights(str(tmp_path / "half"), str(SAM2))
    with pytest.raises(WeightsNotFoundError, match="SAM 2 weights not found: /nonexistent/sam2.pt"):
        check_local_weights(str(CHECKPOINT), "/nonexistent/sam2.pt")
    with pytest.raises(WeightsNotFoundError, match="SAM 3 folder not found: ./sam3"):
        check_local_weights(str(CHECKPOINT), str(SAM2), sam3="./sam3")
    assert not any(empty_offline_hub.rglob("*.*"))  # nothing was fetched


def test_missing_local_model_folder(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        PAM.from_pretrained(str(tmp_path / "no" / "such" / "folder"), device="cpu", local_files_only=True)


# ---------------------------------------------------------------- devices

@needs_fixture
@pytest.mark.parametrize("device, dtype, fragment", [("tpu9", "float32", "tpu9"), ("cpu", "float16", "float16"),
                                                     ("cpu", "int8", "int8")])
def test_bad_device_or_dtype(pam_cli, tmp_path, device, dtype, fragment):
    with pytest.raises(DeviceError, match=fragment):
        PAM.from_pretrained(CHECKPOINT, sam2=SAM2, device=device, dtype=dtype, local_files_only=True)
    if dtype in ("float32", "float16"):  # the CLI only offers float32 / bfloat16 / float16
        line = _cli(pam_cli, tmp_path / "out", str(IMAGE), "--box", "70,110,270,340", *CLI_MODEL,
                    "--device", device, "--dtype", dtype)
        assert fragment in line


@pytest.mark.parametrize("args", [["--max-new-tokens", "0"], ["--sample", "--temperature", "0"],
                                  ["--repetition-penalty", "-1"]])
def test_bad_generation_settings_cli(pam_cli, tmp_path, args):
    line = _cli(pam_cli, tmp_path / "out", str(IMAGE), "--box", "70,110,270,340", *CLI_MODEL, *args)
    assert "must" in line or "need" in line
    assert not (tmp_path / "out").exists()
