#!/usr/bin/env bash
# `pam eval caption` needs Java: pycocoevalcap's PTB tokenizer and METEOR 1.5 are Java programs.
# Installs a headless JRE from the Debian packages when `java` is missing (CI runs as root); idempotent.
set -euo pipefail
if command -v java >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "eval setup: java is missing; install a JRE (e.g. apt-get install default-jre-headless) as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian's JRE post-install wants the man1 folder, which slim images drop.
mkdir -p /usr/share/man/man1
apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null
java -version
