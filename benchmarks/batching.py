"""Benchmark: PAM's engine (one encoder pass, batched regions and tasks) against the reference's way.

Random weights at real sizes (SAM 2.1 Hiera-L + a Qwen2.5-1.5B-shaped LLM with the real Qwen2.5 tokenizer),
a fixed number of new tokens per text, and each scenario in its own process so that its peak RSS is its own:

  a  engine, 1 region
  b  engine, 8 regions of one image
  c  the same 8 regions as 8 reference-style calls (fresh encoder pass + single-region generation each)
  d  engine, 8 regions x 2 tasks (detailed caption + category)
  e  8 reference-style category calls: with c's 8 caption calls, the 16 independent calls that d replaces
     (independent calls just add up, so c's are not run twice)
  f  describe everything on a 640x480 picture (grid 16x16, 8 regions, category)

Outputs of b and c, and of d and c+e, must be identical (token ids and masks); the script says so and exits
1 if not. Every number and token id goes to --workdir/batching-results.json as well.
Usage: python benchmarks/batching.py [--workdir DIR] [--threads 2] [--device cpu] [--dtype float32]
The random checkpoint (about 4 GB) is written to --workdir once and reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCENARIOS = {
    "a": "engine, 1 region",
    "b": "engine, 8 regions",
    "c": "8 reference-style calls (caption)",
    "d": "engine, 8 regions x 2 tasks",
    "e": "8 reference-style calls (category)",
    "f": "describe everything (8 regions)",
}
BOXES = [[40, 60, 200, 300], [220, 40, 420, 220], [430, 80, 620, 300], [60, 320, 260, 460],
         [280, 250, 460, 470], [480, 320, 630, 470], [150, 150, 500, 400], [10, 10, 630, 470]]
TASKS = ["detailed", "category"]
PICTURE_PIXELS = 640 * 480


def picture() -> np.ndarray:
    """A 640x480 'photo': a gradient background with a few filled shapes (deterministic)."""
    ys, xs = np.mgrid[0:480, 0:640]
    image = np.stack([xs * 255 // 640, ys * 255 // 480, np.full_like(xs, 90)], axis=-1).astype(np.uint8)
    rng = np.random.default_rng(0)
    for x0, y0, x1, y1 in BOXES[:6]:
        image[y0 + 10:y1 - 10, x0 + 10:x1 - 10] = rng.integers(0, 256, 3)
    return image


def prepare(workdir: Path) -> tuple[Path, Path]:
    from pam_core.synthetic import QWEN2_5_1_5B, qwen2_5_tokenizer, write_random_checkpoint, write_random_sam2

    sam2 = workdir / "sam2" / "sam2.1_hiera_large.pt"
    model = workdir / "pam-1.5b-random"
    if not sam2.is_file():
        print(f"writing random SAM 2.1 Hiera-L to {sam2.parent} ...", flush=True)
        write_random_sam2(sam2.parent, large=True)
    if not (model / "config.json").is_file():
        print(f"writing a random Qwen2.5-1.5B-shaped PAM to {model} ...", flush=True)
        write_random_checkpoint(model, QWEN2_5_1_5B, tokenizer=qwen2_5_tokenizer())
    return model, sam2


def run_scenario(name: str, model: Path, sam2: Path, args) -> dict:
    """Runs in a child process: load, then time one scenario."""
    import torch

    from pam_core import PAM, AutoMaskSettings, GenerationSettings, Region

    torch.set_num_threads(args.threads)
    settings = GenerationSettings(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    engine = PAM.from_pretrained(model, sam2=sam2, device=args.device, dtype=args.dtype, local_files_only=True)
    reference_style = PAM(engine.model, cache_size=0, max_batch=1)
    image = picture()
    regions = [Region.from_box(b) for b in BOXES]
    start = time.perf_counter()
    if name == "a":
        results = list(enumerate(engine.describe(image, regions[:1], task=TASKS[0], generation=settings)))
    elif name == "b":
        results = list(enumerate(engine.describe(image, regions, task=TASKS[0], generation=settings)))
    elif name in "ce":
        task = TASKS[0] if name == "c" else TASKS[1]
        results = [(i, reference_style.describe(image, [r], task=task, generation=settings)[0])
                   for i, r in enumerate(regions)]
    elif name == "d":
        results = list(enumerate(engine.describe(image, regions, task=TASKS, generation=settings)))
    else:
        # random weights: every candidate is a blob, so the thresholds are opened to find 8 regions to describe
        auto = AutoMaskSettings(max_regions=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.99)
        results = list(enumerate(engine.describe_everything(image, task=TASKS[1], generation=settings, auto=auto)))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    outputs = {}  # "region|task" -> (token ids, mask digest), to compare scenarios
    for index, r in results:
        for task, ids in r.token_ids.items():
            outputs[f"{index}|{task}"] = [ids, hashlib.sha1(r.mask.tobytes()).hexdigest()]
    np.savez_compressed(mask_file(args, name), **{str(index): r.mask for index, r in results})
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    return {"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_gpu_gb": peak_gpu, "regions": len({i for i, _ in results}), "outputs": outputs}


def mask_file(args, name: str) -> Path:
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    return Path(args.workdir) / f"masks-{name}.npz"


def differing_pixels(args, engine_run: str, reference_runs: str) -> list[int]:
    """Pixels that differ between the engine's and the reference-style calls' mask, per region that differs."""
    engine = np.load(mask_file(args, engine_run))
    counts = []
    for name in reference_runs:
        reference = np.load(mask_file(args, name))
        counts += [int((engine[k] != reference[k]).sum()) for k in reference.files if k in engine.files]
    return [c for c in counts if c]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/pam-suite-bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--scenarios", default="abcdef", help="which scenarios to run (default: abcdef)")
    parser.add_argument("--model", default=None, help="use this PAM checkpoint instead of the random real-size one")
    parser.add_argument("--sam2", default=None, help="with --model: its SAM 2 weights")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    model, sam2 = (Path(args.model), Path(args.sam2)) if args.model else prepare(Path(args.workdir))
    if args.child:
        print(json.dumps(run_scenario(args.child, model, sam2, args)))
        return 0

    print(f"device {args.device}, {args.dtype}, {args.threads} threads, {args.new_tokens} new tokens per text")
    print(f"{'':<3}{'scenario':<34}{'regions':>8}{'wall s':>10}{'s/region':>10}{'peak RSS GB':>13}"
          f"{'peak GPU GB':>13}", flush=True)
    measured = {}
    for name in args.scenarios:
        child = [sys.executable, __file__, "--child", name, *sys.argv[1:]]
        proc = subprocess.run(child, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        m = measured[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        gpu = f"{m['peak_gpu_gb']:.2f}" if m["peak_gpu_gb"] is not None else "-"
        print(f"{name:<3}{SCENARIOS[name]:<34}{m['regions']:>8}{m['seconds']:>10.1f}"
              f"{m['seconds'] / max(m['regions'], 1):>10.1f}{m['peak_rss_gb']:>13.2f}{gpu:>13}", flush=True)
    status = 0
    for engine_run, reference_runs in (("b", "c"), ("d", "ce")):
        if all(name in measured for name in engine_run + reference_runs):
            reference_outputs = {k: v for name in reference_runs for k, v in measured[name]["outputs"].items()}
            engine_outputs = measured[engine_run]["outputs"]
            same = engine_outputs == reference_outputs
            ratio = sum(measured[name]["seconds"] for name in reference_runs) / measured[engine_run]["seconds"]
            differ = ""
            if not same:
                texts = sum(engine_outputs.get(k, [None])[0] != v[0] for k, v in reference_outputs.items())
                pixels = differing_pixels(args, engine_run, reference_runs)
                differ = (f" (token ids differ in {texts} of {len(reference_outputs)} texts; masks differ in "
                          f"{len(pixels)} region(s), by {pixels} pixels of {PICTURE_PIXELS})")
            print(f"({'+'.join(reference_runs)})/({engine_run}) = {ratio:.2f}x   "
                  f"outputs identical: {'yes' if same else 'NO'}{differ}")
            status |= not same
    results = Path(args.workdir) / "batching-results.json"
    results.write_text(json.dumps({"settings": vars(args), "scenarios": measured}, indent=1))
    print(f"all numbers and token ids: {results}")
    return status


if __name__ == "__main__":
    sys.exit(main())
