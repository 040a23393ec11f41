#!/usr/bin/env bash
# Test prerequisites of the FiftyOne plugin that are not pip packages: a headless Chromium (driven by the
# `playwright` pip package through its executable path, so no browser download) for the App checks, and ffmpeg
# (with ffprobe), which FiftyOne's apply_model uses to read videos for video models.
# Idempotent: installs only what is missing.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
{ command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; } || missing+=(ffmpeg)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "fiftyone test setup: ${missing[*]} missing; install them (apt-get install ${missing[*]}) or the App and" \
         "video-model tests skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
