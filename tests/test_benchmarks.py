"""The GPU check in its CPU smoke mode, the dataset and Ray benchmarks at the smallest size, as the lead runs them (the
numbers are not checked, only that every section ran and what must be equal is), and the fixture pack that carries
the parity fixture to the GPU machine."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from helpers import FIXTURE, REPO, needs_fixture


@pytest.fixture
def benchmarks(monkeypatch):
    """benchmarks/ on sys.path, as when its scripts run: they import each other by module name."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))


def test_fixture_pack_restores_every_file_and_stores_a_repeated_tensor_once(benchmarks, tmp_path):
    import gpu_check

    generator = torch.Generator().manual_seed(0)
    embed, weight = (torch.randn(256, 256, generator=generator) for _ in range(2))  # 256 KiB each, incompressible
    source = tmp_path / "fixtures" / "tiny"
    (source / "checkpoint").mkdir(parents=True)
    save_file({"embed": embed, "weight": weight}, str(source / "checkpoint" / "model-1.safetensors"))
    save_file({"lm_head": embed.clone()}, str(source / "checkpoint" / "model-2.safetensors"))
    torch.save({"model": {"weight": weight.clone()}}, source / "sam2.pt")  # a torch zip archive
    (source / "spec.json").write_text('{"cases": []}')
    pack = tmp_path / "fixtures.pack.xz"
    gpu_check.pack_fixtures(tmp_path / "fixtures", pack)
    assert pack.stat().st_size < 2.3 * 2**18  # two distinct tensors, not the four stored
    gpu_check.unpack_fixtures(pack, tmp_path / "restored")
    files = sorted(p.relative_to(tmp_path / "fixtures") for p in (tmp_path / "fixtures").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "restored") for p in (tmp_path / "restored").rglob("*")
                           if p.is_file())
    for name in files:
        assert (tmp_path / "restored" / name).read_bytes() == (tmp_path / "fixtures" / name).read_bytes(), name


@pytest.mark.slow
@needs_fixture
def test_gpu_check_cpu_smoke_runs_every_section(tmp_path):
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--out", str(tmp_path / "out"),
                           "--workdir", str(tmp_path / "work"), "--fixtures", str(FIXTURE.parent)],
                          cwd=REPO, capture_output=True, text=True, env={**_env(), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["errors"] == {}
    assert report["environment"]["device"] == "cpu"
    [parity] = report["parity"]
    assert parity["exit_status"] == 0 and parity["passed"] > 0 and parity["failed"] == 0, parity
    assert report["bf16"]["texts"] == 8 and 0 <= report["bf16"]["token_agreement"] <= 1
    assert 0 <= report["bf16"]["mask_iou_min"] <= report["bf16"]["mask_iou_mean"] <= 1
    assert [row["regions"] for row in report["regions"]["rows"]] == [1, 3]
    for run in (report["stream"], report["per_image"], report["compiled_stream"]):
        assert run["images"] == 4 and run["regions"] == 12 and run["tokens"] == 12 * 4 and run["regions_per_s"] > 0
    assert report["comparison"]["outputs"]["identical"]  # float32: the stream gives what describe gives
    assert report["comparison"]["compiled"]["outputs"]["identical"]  # and so does the compiled decoder's
    assert report["compiled"]["identity"]["texts"] == 8 == report["compiled"]["identity"]["identical_texts"]
    for section in ("decode", "compiled"):
        assert [row["rows"] for row in report[section]["steps"]] == [1, 3]
        assert all(row["ms_per_step"] > 0 and row["kv_length"] > 1000 for row in report[section]["steps"])
    table = (tmp_path / "out" / "gpu-check.txt").read_text()
    assert "parity pam_tiny on cpu" in table and "streaming / per-image" in table and "decoding step" in table
    assert "compiled streaming / per-image" in table


@pytest.mark.slow
@needs_fixture
def test_dataset_benchmark_compares_per_image_and_streaming(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/dataset.py", "--images", "2", "--regions", "2",
                           "--new-tokens", "2", "--rss-images", "none", "--workdir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "dataset-results.json").read_text())
    assert set(results["runs"]) == {"per-image:2", "stream:2"}
    assert results["summary"]["outputs"] == {"texts": 4, "identical_texts": 4, "masks": 4, "identical_masks": 4,
                                             "identical": True}
    assert "regions/s, streaming / per-image" in proc.stdout and "target >= 3x" in proc.stdout


@pytest.mark.slow
@needs_fixture
def test_ray_benchmark_runs_one_process_and_ray_with_one_and_two_workers(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/ray_scale.py", "--tiny", "--images", "2", "--new-tokens", "2",
                           "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "ray-scale-results.json").read_text())
    assert set(results["runs"]) == {"single", "ray-1", "ray-2"}
    assert all(run["images"] == 2 and run["regions"] == 2 for run in results["runs"].values())
    assert results["same_texts"] and 0 <= results["two_workers_text_agreement"] <= 1
    assert "Ray overhead, 1 worker vs one process" in proc.stdout and "2 workers vs 1 worker" in proc.stdout


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}
