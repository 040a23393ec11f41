"""`pam describe IMAGE`: segment and describe the prompted regions of an image, or every object SAM 2 finds.

Output folder: `mask_NNN.png` per region, `overlay.png`, and `results.json` last, which marks a complete run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..automask import AutoMaskSettings
from ..errors import PromptError
from ..generation import GenerationSettings
from ..io import draw_overlay, load_image, mask_to_png, save_png, write_json
from ..prompts import Region
from .common import (
    batch_options,
    box_region,
    checked_max_batch,
    checked_tasks,
    concept_finder,
    concept_options,
    concepts_of,
    decoding_options,
    everything_options,
    load_model,
    log,
    model_options,
    model_source,
    points_region,
    progress_log,
    prompt_options,
    sampling_options,
    settings_from,
    task_options,
)


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "describe", parents=[prompt_options(), concept_options(), model_options(), decoding_options(),
                             sampling_options(), task_options(), batch_options(), everything_options()],
        help="segment and describe regions of an image",
        description="Each --box and each --mask is one region; all --point options together form one region; "
                    "--everything finds the regions itself, and so does --find (every instance of a concept).")
    parser.add_argument("image", help="image file (PNG, JPEG, TIFF, ...)")
    parser.add_argument("--out", required=True, help="output folder: results.json, mask_NNN.png, overlay.png")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON on stdout")
    parser.set_defaults(run=run)


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
    tasks = checked_tasks(args)
    auto = settings_from(args, AutoMaskSettings)
    generation = settings_from(args, GenerationSettings)
    checked_max_batch(args)
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
