#!/usr/bin/env bash
# Sets up ./.venv (with the test extra) and what the host tests need, then runs the test suite offline on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# Each host integration installs its own test prerequisites (ComfyUI tree, browser, Java, ...) in one script here.
shopt -s nullglob
for step in scripts/test-setup/*.sh; do
    bash "$step"
done
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
