"""Test environment: no hub access, CPU, and the shared golden fixture when the machine has it."""

import os
import signal
import subprocess

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pam_tiny"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"golden fixture {FIXTURE} is absent")


def interruptible(command: list, **kwargs) -> subprocess.Popen:
    """A child that SIGINT reaches as Ctrl-C in a terminal does, even when the test run itself inherited SIGINT
    ignored (a background job of a non-interactive shell, e.g. `nohup ... &`), which Python children keep."""
    return subprocess.Popen(command, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


@pytest.fixture(scope="session")
def pam():
    """The golden fixture's checkpoint, loaded once for every test that reads it (tests must not modify it)."""
    if not FIXTURE.is_dir():
        pytest.skip(f"golden fixture {FIXTURE} is absent")
    from pam_core import PAM

    return PAM.from_pretrained(FIXTURE / "checkpoint", sam2=FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt",
                               device="cpu", local_files_only=True)


@pytest.fixture(scope="session")
def synthetic_checkpoint(tmp_path_factory):
    """A self-contained random-weight PAM (single-file layout) and its tiny SAM 2, written by pam_core."""
    from pam_core.synthetic import write_random_checkpoint, write_random_sam2

    root = tmp_path_factory.mktemp("synthetic")
    sam2 = write_random_sam2(root / "sam2")
    return write_random_checkpoint(root / "pam"), sam2


class PamCli:
    """`pam ARGS...` run in this process: no new interpreter, and a model the loading path has cached is reused."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *args) -> subprocess.CompletedProcess:
        from pam_core.cli import main

        self.capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = self.capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    def error(self, *args) -> str:
        """Run a call that bad input must stop: exit status 2, nothing on stdout, no traceback, and one
        `pam: error:` line, the last on stderr. Returns that line."""
        proc = self(*args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == "" and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("pam: error:")]
        assert len(errors) == 1, proc.stderr
        assert proc.stderr.rstrip("\n").splitlines()[-1] == errors[0], "the error must be the last line, on one line"
        return errors[0]


@pytest.fixture
def pam_cli(capsys) -> PamCli:
    return PamCli(capsys)
