#!/usr/bin/env bash
# ./.venv-min: ./.venv with the LOWEST transformers that pyproject.toml declares ("transformers>=X"), on which
# tests/test_transformers_min.py runs the fast parity tier (the main run has the newest; docs/compatibility.md).
# Only transformers and what pip adds for it (tokenizers, huggingface_hub) live in .venv-min (~150 MB); torch, sam2,
# numpy and the rest come from ./.venv through a .pth file, i.e. after the venv's own site-packages.
# Idempotent: pip runs only when .venv-min is missing or holds another transformers.
set -euo pipefail
cd "$(dirname "$0")/../.."
min=$(sed -n 's/^ *"transformers>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)  # tests/test_transformers_min.py: same
if ! [[ "$min" =~ ^[0-9][0-9.]*$ ]]; then
    echo "transformers-min: expected one \"transformers>=X\" dependency in pyproject.toml, got '$min'" >&2
    exit 1
fi
version() { "$1" -c 'import sys; print(sys.version)'; }
if [ -x .venv-min/bin/python ] && [ "$(version .venv-min/bin/python)" != "$(version .venv/bin/python)" ]; then
    rm -rf .venv-min  # .venv was re-created with another Python
fi
[ -x .venv-min/bin/python ] || .venv/bin/python -m venv .venv-min
main_site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
min_site=$(.venv-min/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "$main_site" > "$min_site/_pam_main_venv.pth"
installed=$(.venv-min/bin/python -c 'import importlib.metadata as m; print(m.version("transformers"))' || true)
if [ "$installed" != "$min" ]; then
    # pip sees ./.venv's packages too and leaves them alone (outside this environment); the conflicts it would report
    # are those packages' own pins on the newest transformers (sentence-transformers, this project), hence no warning.
    .venv-min/bin/python -m pip install --quiet --disable-pip-version-check --no-warn-conflicts "transformers==$min"
fi
