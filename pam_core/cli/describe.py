"""`pam describe IMAGE`: segment and describe the prompted regions of an image, or every object SAM 2 finds.

Output folder: `mask_NNN.png` per region, `overlay.png`, and `results.json` last, which marks a complete run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..automask import ORDERS, AutoMaskSettings
from ..errors import PromptError, SettingsError
from ..generation import GenerationSettings
from ..io import draw_overlay, load_image, mask_to_png, save_png, write_json
from ..prompts import Region
from ..tasks import LANGUAGES, resolve_tasks
from .common import (
    box_region,
    concept_finder,
    concept_options,
    concepts_of,
    decoding_options,
    load_model,
    log,
    model_options,
    model_source,
    points_region,
    progress_log,
    prompt_options,
    sampling_options,
    settings_from,
)

DEFAULT_TASK = "category"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "describe", parents=[prompt_options(), concept_options(), model_options(), decoding_options(),
                             sampling_options()],
        help="segment and describe regions of an image",
        description="Each --box and each --mask is one region; all --point options together form one region; "
                    "--everything finds the regions itself, and so does --find (every instance of a concept).")
    parser.add_argument("image", help="image file (PNG, JPEG, TIFF, ...)")
    parser.add_argument("--task", action="append", default=None,
                        help=f"category | definition | brief | detailed | a free instruction in quotes (default: "
                             f"{DEFAULT_TASK}); repeat for several texts per region")
    parser.add_argument("--lang", default="en", choices=LANGUAGES, help="language of the task prompt (default: en)")
    parser.add_argument("--max-batch", type=int, default=None, metavar="N",
                        help="(region, task) sequences decoded together (default: 16 on the CPU, from free memory "
                             "on a GPU)")
    parser.add_argument("--out", required=True, help="output folder: results.json, mask_NNN.png, overlay.png")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON on stdout")
    _add_everything_options(parser)
    parser.set_defaults(run=run)


def _add_everything_options(parser: argparse.ArgumentParser) -> None:
    """--everything and the AutoMaskSettings it runs with (SAM 2's automatic mask generation)."""
    defaults = AutoMaskSettings()
    group = parser.add_argument_group(
        "describe everything", "--everything finds the regions with SAM 2's automatic mask generation; the other "
                               "options here tune it (defaults: pam_core.AutoMaskSettings)")
    group.add_argument("--everything", action="store_true", help="no prompt: find the objects and describe each")
    group.add_argument("--max-regions", type=int, default=defaults.max_regions, metavar="N",
                       help="at most N regions (default: %(default)s)")
    group.add_argument("--order", default=defaults.order, choices=ORDERS,
                       help="keep the largest regions or those SAM 2 is surest of (default: %(default)s)")
    group.add_argument("--points-per-side", type=int, default=defaults.points_per_side, metavar="N",
                       help="N x N grid of point prompts (default: %(default)s; SAM 2's own generator uses 32, "
                            "4x slower)")
    group.add_argument("--pred-iou-thresh", type=float, default=defaults.pred_iou_thresh, metavar="T",
                       help="keep masks whose predicted IoU is above T (default: %(default)s)")
    group.add_argument("--stability-score-thresh", type=float, default=defaults.stability_score_thresh, metavar="T",
                       help="keep masks whose stability score is at least T (default: %(default)s)")
    group.add_argument("--box-nms-thresh", type=float, default=defaults.box_nms_thresh, metavar="T",
                       help="drop a mask whose box overlaps a better one's by an IoU above T (default: %(default)s)")
    group.add_argument("--min-area", type=float, default=defaults.min_area, metavar="F",
                       help="drop masks smaller than this fraction of the image (default: %(default)s)")


def _regions(args) -> list[Region]:
    regions = [box_region(text) for text in args.box]
    if args.point:
        regions.append(points_region(args.point))
    regions += [Region.from_mask(path) for path in args.mask]
    if args.find and (regions or args.everything):
        raise PromptError("--find finds the regions itself; drop --box, --point, --mask and --everything")
    if regions and args.everything:
        raise PromptError("--everything finds the regions itself; drop --box, --point and --mask")
    if not regions and not args.everything and not args.find:
        raise PromptError("give at least one region (--box, --point or --mask), --everything or --find")
    return regions


def _overlay_label(result) -> str:
    label = result.fields.get("label") or result.text
    return f"{result.concept}: {label}" if result.concept is not None else label


def run(args) -> int:
    # every bad option and input fails before the slow model load
    tasks = args.task or [DEFAULT_TASK]
    resolve_tasks(tasks, args.lang)
    auto = settings_from(args, AutoMaskSettings)
    generation = settings_from(args, GenerationSettings)
    if args.max_batch is not None and args.max_batch < 1:
        raise SettingsError(f"--max-batch must be >= 1, got {args.max_batch}")
    image = load_image(args.image)
    regions = [region.validated(image.width, image.height) for region in _regions(args)]
    concepts = concepts_of(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").unlink(missing_ok=True)  # results.json marks a complete run; drop a stale one first

    start = time.time()
    finder = concept_finder(args) if concepts else None  # a missing SAM 3 fails before PAM loads
    pam = load_model(args, max_batch=args.max_batch, cache_size=0)
    if args.everything:
        results = pam.describe_everything(image, task=tasks, lang=args.lang, generation=generation, auto=auto,
                                          progress=progress_log(start))
    elif concepts:
        results = pam.find(image, concepts, task=tasks, lang=args.lang, threshold=args.find_threshold,
                           max_instances=args.max_instances, generation=generation, sam3=finder,
                           progress=progress_log(start))
    else:
        results = pam.describe(image, regions, task=tasks, lang=args.lang, generation=generation,
                               progress=progress_log(start))
    records = []
    for result in results:
        name = f"mask_{result.index:03d}.png"
        save_png(out / name, mask_to_png(result.mask))
        records.append({"image": str(args.image), "width": image.width, "height": image.height,
                        "model": model_source(args).name, **result.to_dict(), "mask_png": name})
    written = {record["mask_png"] for record in records}
    for stale in out.glob("mask_*.png"):
        if stale.name not in written:
            stale.unlink()
    save_png(out / "overlay.png", draw_overlay(image, [(r.mask, r.box, _overlay_label(r)) for r in results]))
    write_json(out / "results.json", records)
    log(f"wrote {len(records)} region(s) to {out} in {time.time() - start:.1f} s")
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=2))
    return 0
