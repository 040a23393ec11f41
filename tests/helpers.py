"""What several test modules share: where the golden fixture is, the skip marks for what a machine may lack, a
free port and a child process that Ctrl-C reaches. (conftest.py holds only fixtures and the environment.)"""

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "pam_tiny"
CHECKPOINT = FIXTURE / "checkpoint"
SAM2 = FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt"
FIFTYONE_PLUGIN = "@pam-suite/pam"  # the plugin's name in fiftyone_plugin/fiftyone.yml
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"golden fixture {FIXTURE} is absent")
# pycocoevalcap's PTB tokenizer and METEOR run Java; tests that need it are also marked `host`.
needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="caption metrics need Java (scripts/test-setup/eval.sh)")
# FiftyOne reads videos with ffmpeg and ffprobe in apply_model (video models) and compute_metadata.
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                  reason="FiftyOne reads videos with ffmpeg, ffprobe (scripts/test-setup/fiftyone.sh)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def interruptible(command: list, **kwargs) -> subprocess.Popen:
    """A child that SIGINT reaches as Ctrl-C in a terminal does, even when the test run itself inherited SIGINT
    ignored (a background job of a non-interactive shell, e.g. `nohup ... &`), which Python children keep."""
    return subprocess.Popen(command, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


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
