#!/usr/bin/env bash
# Test prerequisites of the FiftyOne plugin that are not pip packages: a headless Chromium (driven by the
# `playwright` pip package through its executable path, so no browser download) for the App checks.
# Idempotent: does nothing when chromium is already on PATH.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "fiftyone test setup: chromium is missing; install it (apt-get install chromium) or the App test skips" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
