"""`pam` command line: describe image regions, check parity with the official implementation."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .errors import PAMError, PromptError, SettingsError

# Command-line arguments are in the same unit as the API (pixels); these parse their text forms.


def _numbers(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise PromptError(f"{what} {text!r} must be {count} comma-separated numbers") from None
    if len(values) != count:
        raise PromptError(f"{what} {text!r} must be {count} comma-separated numbers, got {len(values)}")
    return values


def parse_point(text: str) -> tuple[tuple[float, float], int]:
    x, y, label = _numbers(text, 3, "point")
    if label not in (0, 1):
        raise PromptError(f"point {text!r}: the label (third number) must be 1 (positive) or 0 (negative)")
    return (x, y), int(label)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pam", description="Perceive Anything Model: masks and text for image regions.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("describe", help="segment and describe regions of an image",
                       description="Each --box and each --mask is one region; all --point options together form one "
                                   "region; --everything finds the regions itself.")
    d.add_argument("image", help="image file (PNG, JPEG, TIFF, ...)")
    d.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1", help="box region in pixels (repeatable; write --box=-5,10,80,90 when it starts with a minus)")
    d.add_argument("--point", action="append", default=[], metavar="X,Y,1|0",
                   help="point of the point region: 1 positive, 0 negative (repeatable)")
    d.add_argument("--mask", action="append", default=[], metavar="PNG", help="mask region: PNG at image size, non-zero = inside (repeatable)")
    d.add_argument("--everything", action="store_true",
                   help="no prompt: find the objects with SAM 2's automatic mask generation and describe each")
    d.add_argument("--max-regions", type=int, default=16, help="with --everything: at most this many regions (default: 16)")
    d.add_argument("--order", default="area", choices=["area", "score"],
                   help="with --everything: keep the largest regions or those SAM 2 is surest of (default: area)")
    d.add_argument("--points-per-side", type=int, default=16,
                   help="with --everything: N x N point grid of the automatic mask generation (default: 16; SAM 2 uses 32)")
    d.add_argument("--task", action="append", default=None,
                   help="category | definition | brief | detailed | a free instruction in quotes (default: category); "
                        "repeat for several texts per region")
    d.add_argument("--lang", default="en", choices=["en", "zh"], help="language of the task prompt (default: en)")
    d.add_argument("--model", default=None, help="PAM checkpoint folder or Hub id (default: Perceive-Anything/PAM-1.5B)")
    d.add_argument("--sam2", default=None, help="SAM 2.1 weights (.pt/.safetensors) or Hub id (default: facebook/sam2.1-hiera-large)")
    d.add_argument("--sam2-config", default=None, help="SAM 2 yaml or package config name (default: beside the weights, else Hiera-L)")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    d.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="LLM/Perceiver precision (default: float32; SAM 2 always runs in float32)")
    d.add_argument("--local-files-only", action="store_true", help="never download; fail if weights are not on disk")
    d.add_argument("--max-new-tokens", type=int, default=512)
    d.add_argument("--repetition-penalty", type=float, default=None,
                   help="default: the checkpoint's generation_config.json (1.05 in the release)")
    d.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    d.add_argument("--temperature", type=float, default=0.1)
    d.add_argument("--top-p", type=float, default=None)
    d.add_argument("--seed", type=int, default=None, help="seed for --sample")
    d.add_argument("--max-batch", type=int, default=None,
                   help="(region, task) sequences decoded together (default: 16 on the CPU, from free memory on a GPU)")
    d.add_argument("--out", required=True, help="output folder: results.json, mask_NNN.png, overlay.png")
    d.add_argument("--json", action="store_true", help="also print the results as JSON on stdout")

    from .video_cli import add_describe_video

    add_describe_video(sub, d)

    p = sub.add_parser("parity", help="compare against a golden fixture of the official implementation")
    p.add_argument("fixture", help="fixture folder (checkpoint/, sam2/, spec.json, cases/)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--case", action="append", default=None, metavar="NAME",
                   help="run only this case of spec.json (repeatable; default: all)")

    from .evaluation.cli import add_eval_parser  # `pam eval ...`

    add_eval_parser(sub)
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _regions(args) -> list:
    from .prompts import Region

    regions = [Region.from_box(_numbers(b, 4, "box")) for b in args.box]
    if args.point:
        parsed = [parse_point(p) for p in args.point]
        regions.append(Region.from_points([p for p, _ in parsed], [label for _, label in parsed]))
    regions += [Region.from_mask(m) for m in args.mask]
    if regions and args.everything:
        raise PromptError("--everything finds the regions itself; drop --box, --point and --mask")
    if not regions and not args.everything:
        raise PromptError("give at least one region (--box, --point or --mask) or --everything")
    return regions


def load_pam(args, **options):
    """PAM from the --model, --sam2, --sam2-config, --device, --dtype and --local-files-only options;
    `options` go to `PAM.from_pretrained` (max_batch, cache_size)."""
    from .loading import ModelSource, load_pam as load

    start = time.time()
    source = model_source(args)
    _log(f"loading PAM ({source.model}) ...")
    pam = load(source, **options)
    _log(f"loaded in {time.time() - start:.1f} s on {pam.model.device}")
    return pam


def model_source(args):
    """The ModelSource the --model, --sam2, --sam2-config, --device, --dtype and --local-files-only options name."""
    from .loading import ModelSource

    given = {"model": args.model, "sam2": args.sam2}
    return ModelSource(**{k: v for k, v in given.items() if v is not None}, sam2_config=args.sam2_config,
                       device=args.device, dtype=args.dtype, local_files_only=True if args.local_files_only else None)


def generation_settings(args):
    """GenerationSettings from the decoding options `pam describe` and `pam describe-video` share."""
    from .generation import GenerationSettings

    return GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                              top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)


def cmd_describe(args) -> int:
    from .automask import AutoMaskSettings
    from .tasks import resolve_tasks
    from .io import draw_overlay, load_image, mask_to_png, save_png, write_json

    tasks = args.task or ["category"]
    resolve_tasks(tasks, args.lang)  # fail on a bad task or setting before loading anything
    auto = AutoMaskSettings(points_per_side=args.points_per_side, max_regions=args.max_regions, order=args.order)
    if args.max_batch is not None and args.max_batch < 1:
        raise SettingsError(f"--max-batch must be >= 1, got {args.max_batch}")
    settings = generation_settings(args)
    image = load_image(args.image)
    regions = [region.validated(image.width, image.height) for region in _regions(args)]  # before the slow load
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").unlink(missing_ok=True)  # results.json marks a complete run; drop a stale one first

    start = time.time()
    pam = load_pam(args, max_batch=args.max_batch, cache_size=0)
    progress = lambda i, n, msg: _log(f"[{i}/{n}] {msg} ({time.time() - start:.1f} s)")  # noqa: E731
    if args.everything:
        results = pam.describe_everything(image, task=tasks, lang=args.lang, generation=settings, auto=auto,
                                          progress=progress)
    else:
        results = pam.describe(image, regions, task=tasks, lang=args.lang, generation=settings, progress=progress)
    records = []
    for result in results:
        name = f"mask_{result.index:03d}.png"
        save_png(out / name, mask_to_png(result.mask))
        records.append({"image": str(args.image), "width": image.width, "height": image.height,
                        "model": model_source(args).name, **result.to_dict(), "mask_png": name})
    for stale in out.glob("mask_*.png"):
        if stale.name not in {r["mask_png"] for r in records}:
            stale.unlink()
    save_png(out / "overlay.png", draw_overlay(image, [(r.mask, r.box, r.fields.get("label") or r.text) for r in results]))
    write_json(out / "results.json", records)
    _log(f"wrote {len(records)} region(s) to {out} in {time.time() - start:.1f} s")
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=2))
    return 0


def cmd_parity(args) -> int:
    from .parity import format_row, run_parity

    print(f"{'case':<28} {'quantity':<34} {'max_abs_err':>10} {'tol':>6}  status", flush=True)
    rows = run_parity(args.fixture, device=args.device, report=lambda row: print(format_row(row), flush=True),
                      cases=args.case)
    failed = [r for r in rows if r.status == "FAIL"]
    passed = sum(r.status == "PASS" for r in rows)
    unsupported = sum(r.status == "NOT SUPPORTED" for r in rows)
    print(f"\nparity: {passed} passed, {len(failed)} failed, {unsupported} not supported")
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .evaluation.cli import cmd_eval
    from .video_cli import cmd_describe_video

    commands = {"describe": cmd_describe, "describe-video": cmd_describe_video, "parity": cmd_parity, "eval": cmd_eval}
    try:
        return commands[args.command](args)
    except PAMError as exc:
        if args.debug:
            raise
        print(f"pam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pam: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # e.g. an output folder that cannot be written
        if args.debug:
            raise
        print(f"pam: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
