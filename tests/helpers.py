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
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"golden fixture {FIXTURE} is absent")
# pycocoevalcap's PTB tokenizer and METEOR run Java; tests that need it are also marked `host`.
needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="caption metrics need Java (scripts/test-setup/eval.sh)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def interruptible(command: list, **kwargs) -> subprocess.Popen:
    """A child that SIGINT reaches as Ctrl-C in a terminal does, even when the test run itself inherited SIGINT
    ignored (a background job of a non-interactive shell, e.g. `nohup ... &`), which Python children keep."""
    return subprocess.Popen(command, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)
