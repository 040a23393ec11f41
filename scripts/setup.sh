#!/usr/bin/env bash
# Creates ./.venv with torch, sam2 and this project (editable); safe to re-run. Extra pip extras may be
# named as arguments (e.g. `bash scripts/setup.sh test`).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first: sam2 builds against it (no CUDA extension needed: PAM never uses sam2's hole filling).
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
SAM2_BUILD_CUDA=0 "${pip[@]}" --no-build-isolation "sam2==1.1.0"
extras=$(IFS=,; echo "$*")
"${pip[@]}" -e ".${extras:+[$extras]}"
