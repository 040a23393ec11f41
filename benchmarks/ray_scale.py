"""Benchmark: `pam describe-dataset` in one process against the same command on Ray (`--ray local`), over the same
images, end to end (start, model load, describing, writing), as a user runs it.

  single      pam describe-dataset MANIFEST --out DIR                      (--threads torch threads)
  ray-1       ... --ray local --workers 1 --cpus-per-worker THREADS         (one actor with every core)
  ray-2       ... --ray local --workers 2 --cpus-per-worker THREADS/2       (two actors sharing the cores)

Prints seconds, images/s and regions/s per run, Ray's overhead (ray-1 against single; issue #14's target: at most
15%) and the two-worker ratio (reported as measured); exits 1 unless ray-1 wrote the single process's texts. The images
and boxes are benchmarks/dataset.py's; the model is the real-size random checkpoint of benchmarks/batching.py
(`--real-size`, the default) or the tiny fixture (`--tiny`). Numbers go to --workdir/ray-scale-results.json.

  python benchmarks/ray_scale.py                        # real size, 6 images x 1 box, 16-token texts
  python benchmarks/ray_scale.py --tiny --images 24     # the tiny fixture: mostly Ray's fixed costs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import batching
import dataset

OVERHEAD_TARGET = 0.15


def write_manifest(workdir: Path, images: int, regions: int) -> Path:
    paths = dataset.dataset_images(workdir / "images", images)
    manifest = workdir / f"ray-scale-{images}x{regions}.jsonl"
    manifest.write_text("".join(json.dumps({"image": str(path), "regions": [
        {"box": box} for box in dataset.dataset_boxes(index, regions)]}) + "\n" for index, path in enumerate(paths)))
    return manifest


def run(name: str, manifest: Path, out: Path, model_args: list[str], extra: list[str], threads: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "RAY_DISABLE_USAGE_STATS": "1", "OMP_NUM_THREADS": str(threads)}
    env.setdefault("RAY_AUTH_MODE", "token")
    env.setdefault("RAY_AUTH_TOKEN", os.urandom(16).hex())  # a local Ray of its own: no ~/.ray/auth_token written
    command = [sys.executable, "-m", "pam_core.cli", "describe-dataset", str(manifest), "--out", str(out),
               "--no-progress", *model_args, *extra]
    print(f"{name}: {' '.join(command[3:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    import pyarrow.dataset as pads

    rows = pads.dataset(out).to_table().to_pylist()
    texts = {f"{r['id']}#{r['region']}": {k: v for k, v in r.items() if k.startswith("text_")} for r in rows}
    regions = sum(r["region"] is not None for r in rows)
    return {"seconds": seconds, "images": len({r["id"] for r in rows}), "regions": regions,
            "images_per_s": len({r["id"] for r in rows}) / seconds, "regions_per_s": regions / seconds,
            "texts": texts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--regions", type=int, default=1, help="boxes per image")
    parser.add_argument("--new-tokens", type=int, default=16, help="longest text (--max-new-tokens)")
    parser.add_argument("--threads", type=int, default=2, help="cores of the machine to use")
    parser.add_argument("--tiny", action="store_true", help="the tiny fixture instead of the real-size checkpoint")
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/pam-suite-bench"))
    args = parser.parse_args()

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        model, sam2 = dataset.FIXTURE / "checkpoint", dataset.FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt"
    else:
        model, sam2 = batching.prepare(workdir)
    manifest = write_manifest(workdir, args.images, args.regions)
    model_args = ["--model", str(model), "--sam2", str(sam2), "--device", "cpu", "--max-new-tokens",
                  str(args.new_tokens), "--local-files-only"]
    half = max(args.threads // 2, 1)
    runs = {
        "single": run("single", manifest, workdir / "out-single", model_args, [], args.threads),
        "ray-1": run("ray-1", manifest, workdir / "out-ray-1", model_args,
                     ["--ray", "local", "--workers", "1", "--cpus-per-worker", str(args.threads)], args.threads),
        "ray-2": run("ray-2", manifest, workdir / "out-ray-2", model_args,
                     ["--ray", "local", "--workers", "2", "--cpus-per-worker", str(half)], half),
    }
    # one worker with every core computes what the single process computes, bit for bit; two single-thread workers
    # add floats in another order, which may flip a near-tie token
    same = runs["ray-1"]["texts"] == runs["single"]["texts"]
    texts = runs["single"]["texts"]
    agreement = sum(runs["ray-2"]["texts"].get(key) == value for key, value in texts.items()) / max(len(texts), 1)
    overhead = runs["ray-1"]["seconds"] / runs["single"]["seconds"] - 1
    two = runs["ray-2"]["regions_per_s"] / runs["ray-1"]["regions_per_s"]

    size = "tiny fixture" if args.tiny else "real size (random Hiera-L + Qwen2.5-1.5B shape, float32)"
    print(f"\n{args.images} images x {args.regions} box(es), {size}, CPU, {args.threads} threads, texts of at most "
          f"{args.new_tokens} tokens; end to end (start, load, describe, write)\n")
    print(f"{'run':<8} {'seconds':>8} {'images/s':>9} {'regions/s':>10}")
    for name, r in runs.items():
        print(f"{name:<8} {r['seconds']:>8.1f} {r['images_per_s']:>9.3f} {r['regions_per_s']:>10.3f}")
    verdict = "met" if overhead <= OVERHEAD_TARGET else "NOT met"
    print(f"\nRay overhead, 1 worker vs one process: {overhead:+.1%} (target <= {OVERHEAD_TARGET:.0%}: {verdict})")
    print(f"2 workers vs 1 worker, regions/s: {two:.2f}x (reported as measured)")
    print(f"ray-1 wrote the texts of the single process: {same}; ray-2 (other thread count): {agreement:.0%} of "
          "regions the same")
    results = {"images": args.images, "regions": args.regions, "new_tokens": args.new_tokens, "tiny": args.tiny,
               "threads": args.threads, "overhead": overhead, "two_workers_ratio": two, "same_texts": same,
               "two_workers_text_agreement": agreement,
               "runs": {name: {k: v for k, v in r.items() if k != "texts"} for name, r in runs.items()}}
    (workdir / "ray-scale-results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
