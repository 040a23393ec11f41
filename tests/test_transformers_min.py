"""The fast parity tier on the lowest transformers we declare (the main run has the newest): token-exact parity with
the golden fixture's image cases (plain layout, and a corrupted copy that must fail) and the self-contained checks,
which load the release (sharded) layout too and decode batches whose rows finish early; and concept prompts (SAM 3,
transformers 5.0+) failing there with an error that names the version to install. Left out for time: the
release-layout test, i.e. the video case (about 90 s on the CPU, no transformers API the image cases do not use).
./.venv-min comes from scripts/test-setup/transformers-min.sh."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers import FIXTURE

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv-min" / "bin" / "python"
FAST_TIER = ["tests/test_parity.py", "tests/test_synthetic.py",
             "tests/test_concepts.py::test_transformers_without_sam3_names_the_version_to_install",
             "-k", "not test_release_layout_matches_reference"]


def declared_minimum() -> str:
    """X of the one `"transformers>=X"` in pyproject.toml (scripts/test-setup/transformers-min.sh reads it the same
    way), which requirements.txt (ComfyUI-Manager's) repeats."""
    found = re.findall(r'^\s*"transformers>=([0-9][0-9.]*)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert len(found) == 1, found
    return found[0]


def test_requirements_txt_declares_the_same_minimum():
    lines = [line.split("#")[0].replace(" ", "") for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line.startswith("transformers")] == [f"transformers>={declared_minimum()}"]


@pytest.mark.slow
@pytest.mark.skipif(not PYTHON.is_file(), reason="no .venv-min: run scripts/test-setup/transformers-min.sh")
def test_fast_tier_passes_on_the_lowest_declared_transformers(tmp_path):
    minimum = declared_minimum()
    probe = subprocess.run([str(PYTHON), "-c", "import transformers; print(transformers.__version__)"],
                           capture_output=True, text=True, cwd=ROOT)
    assert probe.stdout.strip() == minimum, (
        f".venv-min has transformers {probe.stdout.strip() or probe.stderr[-500:]}, pyproject.toml declares "
        f">={minimum}: run scripts/test-setup/transformers-min.sh")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path),
                           *FAST_TIER], capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    assert proc.returncode == 0, f"fast tier on transformers {minimum}:\n{proc.stdout[-8000:]}{proc.stderr[-2000:]}"
    if FIXTURE.is_dir():  # without it the parity tests skip, as they do in the main run
        assert "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
