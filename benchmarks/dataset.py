"""Benchmark: a dataset of N images x K regions, the per-image loop (`PAM.describe` once per image) against the
streaming engine (`PAM.describe_stream`), and the streaming engine's peak RSS on 100 and on 1,000 images.

Each run is its own process, so that its peak RSS is its own (as in benchmarks/batching.py); the images are
distinct 640x480 JPEGs written to --workdir once, every region a box, every text forced to --new-tokens tokens.

  per-image   N images, `PAM.describe(path, boxes)` one image after the other
  streaming   the same N images through `PAM.describe_stream`
  rss         `PAM.describe_stream` on each count of --rss-images (default 100 and 1,000)

Prints images/s, regions/s and peak RSS per run, then the ratios against the targets of issue #13: streaming vs
per-image regions/s (>= 3x on the tiny fixture on a CPU, >= 1.15x at real size on a CPU) and peak RSS of 1,000
images vs 100 (<= 1.1x). The per-image and streaming token ids must be identical: the script exits 1 if not.
Every number and token id goes to --workdir/dataset-results.json.

  python benchmarks/dataset.py                          # tiny fixture (../shared/fixtures/pam_tiny), CPU
  python benchmarks/dataset.py --real-size --images 8   # random SAM 2.1 Hiera-L + Qwen2.5-1.5B shape
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
from typing import Optional

import batching
import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "pam_tiny"
WIDTH, HEIGHT = 640, 480
# issue #13's targets: (streaming / per-image regions/s) by (real size, device type); peak RSS 1,000 vs 100 images
SPEEDUP_TARGETS = {(False, "cpu"): 3.0, (True, "cpu"): 1.15, (True, "cuda"): 10.0}
RSS_TARGET = 1.1
RUN_NAMES = {"per-image": "per-image", "stream": "streaming"}


def dataset_images(folder: Path, count: int) -> list[Path]:
    """`count` distinct 640x480 JPEG pictures (batching's picture, shifted and tinted per image), written once:
    distinct, so that the engine's feature cache never spares the per-image loop an encoder pass."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{index:06d}.jpg" for index in range(count)]
    missing = [index for index, path in enumerate(paths) if not path.is_file()]
    if missing:
        from PIL import Image

        base = batching.picture()
        for index in missing:
            rng = np.random.default_rng(index)
            image = np.roll(base, int(rng.integers(WIDTH)), axis=1)
            image[..., 2] = rng.integers(256)
            Image.fromarray(image).save(paths[index], quality=90)
    return paths


def dataset_boxes(index: int, count: int) -> list[list[int]]:
    """`count` boxes (xyxy, 48 to 320 pixels a side) of image `index`, the same on every run."""
    rng = np.random.default_rng(10_000 + index)
    sizes = rng.integers(48, 321, size=(count, 2))
    corners = rng.integers(0, [WIDTH, HEIGHT], size=(count, 2)) % ([WIDTH, HEIGHT] - sizes + 1)
    return np.concatenate([corners, corners + sizes], axis=1).tolist()


def dataset_items(paths: list[Path], regions: int) -> list:
    from pam_core import Region, StreamItem

    return [StreamItem(path, [Region.from_box(box) for box in dataset_boxes(index, regions)], id=str(index))
            for index, path in enumerate(paths)]


def _record(measured: dict, image_id: str, results) -> None:
    for r in results:
        measured["regions"] += 1
        for task, ids in r.token_ids.items():
            measured["tokens"] += len(ids)
            measured["outputs"][f"{image_id}|{r.index}|{task}"] = ids
        measured["masks"][f"{image_id}|{r.index}"] = hashlib.sha1(r.mask.tobytes()).hexdigest()


def _finish(pam, measured: dict, start: float) -> dict:
    import torch

    if pam.model.device.type == "cuda":
        torch.cuda.synchronize()
    measured["seconds"] = time.perf_counter() - start
    measured["regions_per_s"] = measured["regions"] / measured["seconds"]
    measured["images_per_s"] = measured["images"] / measured["seconds"]
    measured["tokens_per_s"] = measured["tokens"] / measured["seconds"]
    return measured


def per_image(pam, items: list, task: str, generation, time_limit: Optional[float] = None) -> dict:
    """`PAM.describe` image after image; stops early (with what finished) once `time_limit` seconds are spent."""
    measured = {"images": 0, "regions": 0, "tokens": 0, "outputs": {}, "masks": {}}
    start = time.perf_counter()
    for item in items:
        _record(measured, item.id, pam.describe(item.image, item.regions, task=task, generation=generation))
        measured["images"] += 1
        if time_limit is not None and time.perf_counter() - start > time_limit:
            break
    return _finish(pam, measured, start)


def streamed(pam, items: list, task: str, generation) -> dict:
    """`PAM.describe_stream` over every item; an image that fails is a benchmark error."""
    measured = {"images": 0, "regions": 0, "tokens": 0, "outputs": {}, "masks": {}}
    start = time.perf_counter()
    for result in pam.describe_stream(items, task=task, generation=generation):
        if not result.ok:
            raise RuntimeError(f"image {result.id} failed in the stream: {result.error}")
        _record(measured, result.id, result.regions)
        measured["images"] += 1
    return _finish(pam, measured, start)


def agreement(first: dict, second: dict) -> dict:
    """How many texts (and masks) two runs share, over the keys both produced."""
    keys = first["outputs"].keys() & second["outputs"].keys()
    masks = first["masks"].keys() & second["masks"].keys()
    same = sum(first["outputs"][k] == second["outputs"][k] for k in keys)
    same_masks = sum(first["masks"][k] == second["masks"][k] for k in masks)
    return {"texts": len(keys), "identical_texts": same, "masks": len(masks), "identical_masks": same_masks,
            "identical": same == len(keys) == len(first["outputs"]) == len(second["outputs"])}


def model_paths(args) -> tuple[Path, Path]:
    from pam_core.errors import CheckpointError

    if args.model:
        return Path(args.model), Path(args.sam2)
    if args.real_size:
        return batching.prepare(Path(args.workdir))
    if not FIXTURE.is_dir():
        raise CheckpointError(f"the tiny fixture {FIXTURE} is absent: pass --model DIR --sam2 FILE or --real-size")
    return FIXTURE / "checkpoint", FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt"


def run_child(spec: str, args) -> dict:
    """In a child process: load, then time one run (`per-image:N` or `stream:N`)."""
    import torch

    from pam_core import PAM, GenerationSettings

    mode, count = spec.split(":")
    torch.set_num_threads(args.threads)
    model, sam2 = model_paths(args)
    pam = PAM.from_pretrained(model, sam2=sam2, device=args.device, dtype=args.dtype, local_files_only=True)
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    items = dataset_items(dataset_images(Path(args.workdir) / "images", int(count)), args.regions)
    settings = GenerationSettings(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    run = (per_image if mode == "per-image" else streamed)(pam, items, args.task, settings)
    run["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    run["loaded_rss_gb"] = loaded_rss
    return run


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def _verdict(value: float, target: Optional[float], at_least: bool) -> str:
    if target is None:
        return "(no target)"
    met = value >= target if at_least else value <= target
    return f"{'>=' if at_least else '<='} {target:g}x  {'met' if met else 'NOT met'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="N: images of the per-image vs streaming runs")
    parser.add_argument("--regions", type=int, default=3, help="K: boxes per image")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens of every text (min = max)")
    parser.add_argument("--task", default="category")
    parser.add_argument("--rss-images", default="100,1000", metavar="N,N",
                        help="image counts of the streaming RSS runs, or 'none' (default: %(default)s)")
    parser.add_argument("--real-size", action="store_true",
                        help="random SAM 2.1 Hiera-L + Qwen2.5-1.5B shape (benchmarks/batching.py's, about 4 GB in "
                             "--workdir, needs the bench extra) instead of the tiny fixture")
    parser.add_argument("--model", default=None, help="a PAM checkpoint folder instead (with --sam2)")
    parser.add_argument("--sam2", default=None, help="with --model: its SAM 2 weights")
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/pam-suite-bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.images < 1 or args.regions < 1 or args.new_tokens < 1 or (args.model is None) != (args.sam2 is None):
        parser.error("--images, --regions and --new-tokens must be >= 1, and --model and --sam2 go together")
    try:
        rss_counts = [] if args.rss_images == "none" else [int(n) for n in args.rss_images.split(",")]
    except ValueError:
        parser.error(f"--rss-images takes counts like 100,1000 or 'none', got {args.rss_images!r}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return 0

    model_paths(args)  # the checkpoint is written (or found missing) once, before any child
    dataset_images(Path(args.workdir) / "images", max([args.images, *rss_counts]))
    what = "real size" if args.real_size else (args.model or "tiny fixture")
    print(f"{what}, device {args.device}, {args.dtype}, {args.threads} threads, {args.regions} regions/image, "
          f"{args.new_tokens} new tokens per text, task {args.task}")
    print(f"{'run':<14}{'images':>8}{'regions':>9}{'wall s':>9}{'images/s':>10}{'regions/s':>11}"
          f"{'peak RSS GB':>13}", flush=True)
    runs = {}
    for spec in [f"per-image:{args.images}", f"stream:{args.images}", *(f"stream:{n}" for n in rss_counts)]:
        if spec in runs:
            continue
        proc = subprocess.run([sys.executable, __file__, "--child", spec, *sys.argv[1:]], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        r = runs[spec] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{RUN_NAMES[spec.split(':')[0]]:<14}{r['images']:>8}{r['regions']:>9}{r['seconds']:>9.1f}"
              f"{r['images_per_s']:>10.2f}{r['regions_per_s']:>11.2f}{r['peak_rss_gb']:>13.2f}", flush=True)

    loop, stream = runs[f"per-image:{args.images}"], runs[f"stream:{args.images}"]
    same = agreement(loop, stream)
    speedup = _ratio(stream["regions_per_s"], loop["regions_per_s"])
    device_type = "cuda" if args.device.startswith("cuda") else args.device
    summary = {"speedup": speedup, "speedup_target": SPEEDUP_TARGETS.get((args.real_size, device_type)),
               "outputs": same}
    print(f"\nregions/s, streaming / per-image: {speedup:.2f}x   "
          f"target {_verdict(speedup, summary['speedup_target'], at_least=True)}")
    if len(rss_counts) >= 2:
        small, large = runs[f"stream:{min(rss_counts)}"], runs[f"stream:{max(rss_counts)}"]
        summary["rss_ratio"] = _ratio(large["peak_rss_gb"], small["peak_rss_gb"])
        print(f"peak RSS, streaming, {max(rss_counts)} / {min(rss_counts)} images: {summary['rss_ratio']:.3f}x   "
              f"target {_verdict(summary['rss_ratio'], RSS_TARGET, at_least=False)}")
    print(f"token ids, per-image = streaming: {'yes' if same['identical'] else 'NO'} "
          f"({same['identical_texts']} of {same['texts']} texts identical; masks identical in "
          f"{same['identical_masks']} of {same['masks']} regions)")
    results = Path(args.workdir) / "dataset-results.json"
    results.write_text(json.dumps({"settings": vars(args), "runs": runs, "summary": summary}, indent=1))
    print(f"all numbers and token ids: {results}")
    return 0 if same["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
