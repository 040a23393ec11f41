"""Test environment: no hub access, CPU, and the shared golden fixture when the machine has it."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# A Ray a test starts (`--ray local`, a test cluster): no usage stats, and token auth with a token of this run, so
# that Ray writes no ~/.ray/auth_token.
os.environ["RAY_DISABLE_USAGE_STATS"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", os.urandom(16).hex())

import pytest  # noqa: E402

from helpers import FIXTURE, PamCli  # noqa: E402


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


@pytest.fixture(scope="session")
def synthetic_sam3(tmp_path_factory):
    """A tiny random SAM 3 (transformers format, real CLIP tokenizer from open-clip-torch), written by pam_core."""
    from pam_core.synthetic import write_random_sam3

    return write_random_sam3(tmp_path_factory.mktemp("sam3") / "sam3_tiny")


@pytest.fixture
def pam_cli(capsys) -> PamCli:
    return PamCli(capsys)
