"""`pam describe-dataset --ray` on a real two-node Ray cluster started by the test (a head and a second raylet,
one CPU and a small object store each): the rows of a single-process run, an error row for a bad image, and a
worker killed mid-run that Ray restarts, with every image's rows written once."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

from helpers import CHECKPOINT, SAM2, free_port, needs_fixture

RAY = Path(sys.executable).with_name("ray")
ACTOR_TITLE = "MapBatches(_Describer)"  # in the process title of every worker actor
MODEL_ARGS = ["--model", CHECKPOINT, "--sam2", SAM2, "--device", "cpu", "--max-new-tokens", "6", "--no-progress",
              "--task", "category", "--task", "brief"]
IMAGES = 12


def _ray_env() -> dict:
    """One cluster's environment: its own auth token (nothing written to ~/.ray), no usage stats, offline Hub,
    this checkout importable by the workers."""
    checkout = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    return os.environ | {"RAY_DISABLE_USAGE_STATS": "1", "RAY_AUTH_MODE": "token",
                         "RAY_AUTH_TOKEN": secrets.token_hex(16), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                         "PYTHONPATH": checkout}


def _stop(process: subprocess.Popen) -> None:
    """`ray start --block` stops the processes it started when it gets SIGTERM."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node (another raylet) on this machine, 1 CPU and 80 MB of object store each, in their
    own temp dir; stopped by their own PIDs at the end."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay short
    env = _ray_env()
    port = free_port()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory",
              str(80 * 1024 * 1024), "--temp-dir", str(temp), "--block"]
    started = []
    try:
        for name, first in (("head", ["--head", "--port", str(port), "--include-dashboard=false"]),
                            ("node", ["--address", f"127.0.0.1:{port}"])):
            log = open(temp / f"{name}.log", "w")
            started.append(subprocess.Popen([RAY, "start", *first, *common], env=env, stdout=log, stderr=log))
            _wait_for_nodes(env, port, len(started), temp)
        yield {"address": f"127.0.0.1:{port}", "env": env, "temp": temp}
    finally:
        for process in reversed(started):
            _stop(process)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(env: dict, port: int, nodes: int, temp: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = subprocess.run([RAY, "status", "--address", f"127.0.0.1:{port}"], env=env, capture_output=True,
                                text=True)
        if status.returncode == 0 and status.stdout.count("node_") >= nodes:
            return
        time.sleep(1)
    logs = "\n".join(p.read_text()[-2000:] for p in temp.glob("*.log"))
    pytest.fail(f"the Ray cluster did not reach {nodes} node(s) in {timeout} s:\n{logs}")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """IMAGES small images with a box each, and a corrupt one, in a manifest with relative paths."""
    folder = tmp_path_factory.mktemp("ray_source")
    rows = []
    for index in range(IMAGES):
        rng = np.random.default_rng(index)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{index:02d}.png")
        rows.append({"image": f"{index:02d}.png", "regions": [{"box": [2 + index, 4, 40, 30 + index % 10]}]})
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows.append({"image": "corrupt.png", "regions": [{"box": [1, 1, 20, 20]}]})
    (folder / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "m.jsonl"


def _pam(args: list, env: dict, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pam_core.cli", "describe-dataset", *map(str, args)], env=env,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _finished(process: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"pam describe-dataset did not finish in {timeout} s:\n{out}")
    assert process.returncode == 0, out
    return out


def _rows(out: Path) -> list[dict]:
    return sorted(ds.dataset(out).to_table().to_pylist(), key=lambda r: (r["id"], r["region"] or 0))


@pytest.fixture(scope="module")
def reference(manifest, cluster, tmp_path_factory):
    """The single-process rows, on one thread as each single-CPU worker computes (float32 sums of another thread
    count round differently in the last bit)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    env = cluster["env"] | {"OMP_NUM_THREADS": "1"}
    _finished(_pam([manifest.name, "--out", out, *MODEL_ARGS], env, manifest.parent))
    return _rows(out)


pytestmark = [needs_fixture, pytest.mark.slow]


def test_a_two_node_cluster_gives_the_rows_of_one_process(cluster, manifest, reference, tmp_path):
    out = tmp_path / "out"
    log = _finished(_pam([manifest.name, "--out", out, *MODEL_ARGS, "--ray", cluster["address"], "--workers", "2",
                          "--ray-batch", "3"], cluster["env"], manifest.parent))
    assert "on Ray (127.0.0.1:" in log and "2 worker(s)" in log
    rows = _rows(out)
    assert rows == reference
    assert (out / "_SUCCESS").exists()
    errors = {row["id"]: row["error"] for row in rows if row["error"] is not None}
    assert list(errors) == ["corrupt.png"] and "cannot read image corrupt.png" in errors["corrupt.png"]
    assert all(row["text_brief"] for row in rows if row["error"] is None)
    # the same command again: everything was described, nothing runs on the cluster
    again = _finished(_pam([manifest.name, "--out", out, *MODEL_ARGS, "--ray", cluster["address"]],
                           cluster["env"], manifest.parent))
    assert f"{IMAGES + 1} described earlier, 0 to describe" in again and "on Ray" not in again
    assert _rows(out) == reference


def _actor_pids() -> set[int]:
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {int(line.split(None, 1)[0]) for line in listing.splitlines() if ACTOR_TITLE in line}


def test_a_killed_worker_is_restarted_and_no_row_is_lost_or_doubled(cluster, manifest, reference, tmp_path):
    out = tmp_path / "out"
    run = _pam([manifest.name, "--out", out, *MODEL_ARGS, "--ray", cluster["address"], "--workers", "2",
                "--ray-batch", "2"], cluster["env"], manifest.parent)
    try:
        deadline = time.time() + 180
        # the first images are written: both workers are up and describing
        while not any(p.stat().st_size for p in (out / "_journal").glob("*.jsonl")):
            assert run.poll() is None and time.time() < deadline, "the run ended before any image was written"
            time.sleep(0.1)
        first = _actor_pids()
        assert first, "no worker process found"
        written = sum(len(p.read_text().splitlines()) for p in (out / "_journal").glob("*.jsonl"))
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        seen = set(first)
        while run.poll() is None and time.time() < deadline:
            seen |= _actor_pids()
            time.sleep(0.1)
        log = _finished(run)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert seen - first, f"no worker was started in place of the killed one ({victim}):\n{log}"
    rows = _rows(out)
    counts = Counter(row["id"] for row in rows)
    print(f"killed worker {victim} (of {sorted(first)}) after {written} image(s) were written; Ray started "
          f"{sorted(seen - first)}; {len(counts)} images, {len(rows)} rows, at most {max(counts.values())} per image")
    assert set(counts) == {row["id"] for row in reference} and max(counts.values()) == 1
    assert rows == reference
    assert (out / "_SUCCESS").exists()
