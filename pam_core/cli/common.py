"""What the `pam` commands share: parent parsers for the prompt, model, decoding and sampling options, prompt
parsing, the one model loader, and progress lines on stderr.

An option's dest is the name of the settings field it fills, so `settings_from(args, cls)` builds
`GenerationSettings`, `AutoMaskSettings` or `VideoSettings` from whichever of its options a command has, and the
library checks the values, once.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import TypeVar

from ..automask import ORDERS, AutoMaskSettings
from ..checkpoint import DEFAULT_MODEL, DEFAULT_SAM2, DEFAULT_SAM3
from ..concepts import DEFAULT_MAX_INSTANCES, DEFAULT_THRESHOLD, ConceptFinder, check_find_settings, checked_concepts
from ..concepts import concept_finder as load_concept_finder
from ..engine import PAM
from ..errors import PromptError, SettingsError
from ..generation import GenerationSettings
from ..loading import ModelSource, load_pam
from ..progress import Progress
from ..prompts import Region
from ..tasks import LANGUAGES, resolve_tasks

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_TASK = "category"  # of the image commands
Settings = TypeVar("Settings")


def log(message: str) -> None:
    """Progress and notes go to stderr; stdout carries only what a command prints on purpose."""
    print(message, file=sys.stderr, flush=True)


def progress_log(start: float) -> Progress:
    """A progress callback that logs `[done/total] message (seconds since start)`."""
    return lambda done, total, message: log(f"[{done}/{total}] {message} ({time.time() - start:.1f} s)")


# ------------------------------------------------------------------------------------------- parent parsers

def prompt_options(video: bool = False) -> argparse.ArgumentParser:
    """--box, --point, --mask. In a video a box or mask may name the frame it sits on (`@FRAME`)."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("prompts")
    thing, size, at_frame = ("object", "video", "[@FRAME]") if video else ("region", "image", "")
    group.add_argument("--box", action="append", default=[], metavar=f"X0,Y0,X1,Y1{at_frame}",
                       help=f"box of one {thing} in pixels (repeatable; write --box=-5,10,80,90 when it starts "
                            "with a minus)")
    group.add_argument("--point", action="append", default=[], metavar="X,Y,1|0",
                       help=f"point of the point {thing}{' (on --frame)' if video else ''}: 1 positive, 0 negative "
                            f"(repeatable; all points together form one {thing})")
    group.add_argument("--mask", action="append", default=[], metavar=f"PNG{at_frame}",
                       help=f"mask of one {thing}: PNG at {size} size, non-zero = inside (repeatable)")
    return parser


def model_options() -> argparse.ArgumentParser:
    """--model, --sam2, --sam2-config, --device, --dtype, --local-files-only: a `ModelSource`."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL, help="PAM checkpoint folder or Hub id (default: %(default)s)")
    group.add_argument("--sam2", default=DEFAULT_SAM2,
                       help="SAM 2.1 weights (.pt/.safetensors) or Hub id (default: %(default)s)")
    group.add_argument("--sam2-config", default=None,
                       help="SAM 2 yaml or package config name (default: beside the weights, else Hiera-L)")
    group.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: %(default)s)")
    group.add_argument("--dtype", default="float32", choices=DTYPES,
                       help="LLM/Perceiver precision (default: %(default)s; SAM 2 always runs in float32)")
    group.add_argument("--local-files-only", action="store_true",
                       help="never download; fail if the weights are not on disk")
    return parser


def concept_options(video: bool = False) -> argparse.ArgumentParser:
    """--find, --find-threshold, --max-instances, --sam3: regions found by SAM 3 from text concepts."""
    parser = argparse.ArgumentParser(add_help=False)
    where = "on --frame, each tracked and captioned" if video else "each described as a box prompt"
    group = parser.add_argument_group(
        "concepts (SAM 3)", f"--find gives the regions as text: SAM 3 finds every instance of each concept, {where}")
    group.add_argument("--find", action="append", default=[], metavar="CONCEPT",
                       help="a noun phrase such as 'person' or 'red car' (repeatable)")
    group.add_argument("--find-threshold", type=float, default=DEFAULT_THRESHOLD, metavar="T",
                       help="keep instances whose SAM 3 score is above T (default: %(default)s)")
    group.add_argument("--max-instances", type=int, default=DEFAULT_MAX_INSTANCES, metavar="N",
                       help="at most N instances per concept, the surest first (default: %(default)s)")
    group.add_argument("--sam3", default=DEFAULT_SAM3,
                       help="SAM 3 folder (transformers format) or Hub id; the Hub repo is gated: accept its licence "
                            "first (default: %(default)s)")
    return parser


def concepts_of(args: argparse.Namespace) -> list[str]:
    """The --find concepts and settings checked before any model loads ([] without --find)."""
    if not args.find:
        return []
    check_find_settings(args.find_threshold, args.max_instances)
    return checked_concepts(args.find)


def concept_finder(args: argparse.Namespace) -> ConceptFinder:
    """SAM 3 from --sam3, downloading only as --local-files-only and HF_HUB_OFFLINE allow."""
    start = time.time()
    log(f"loading SAM 3 ({args.sam3}) ...")
    finder = load_concept_finder(args.sam3, local_files_only=True if args.local_files_only else None)
    log(f"loaded in {time.time() - start:.1f} s")
    return finder


def decoding_options() -> argparse.ArgumentParser:
    """--max-new-tokens, --repetition-penalty: greedy decoding, which every command that writes text has."""
    defaults = GenerationSettings()
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("decoding")
    group.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, metavar="N",
                       help="longest text per region and task, in tokens (default: %(default)s)")
    group.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty, metavar="P",
                       help="default: the checkpoint's generation_config.json (1.05 in the release); "
                            "1.0 = pure argmax")
    return parser


def sampling_options() -> argparse.ArgumentParser:
    """--sample, --temperature, --top-p, --seed: sampling instead of greedy decoding."""
    defaults = GenerationSettings()
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("sampling")
    group.add_argument("--sample", dest="do_sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, default=defaults.temperature, metavar="T",
                       help="with --sample (default: %(default)s)")
    group.add_argument("--top-p", type=float, default=defaults.top_p, metavar="P",
                       help="with --sample: nucleus sampling (default: off)")
    group.add_argument("--seed", type=int, default=defaults.seed, help="with --sample: for reproducible texts")
    return parser


def task_options() -> argparse.ArgumentParser:
    """--task (repeatable) and --lang of the image commands; `checked_tasks` reads them."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--task", action="append", default=None,
                        help=f"category | definition | brief | detailed | a free instruction in quotes (default: "
                             f"{DEFAULT_TASK}); repeat for several texts per region")
    parser.add_argument("--lang", default="en", choices=LANGUAGES, help="language of the task prompt (default: en)")
    return parser


def checked_tasks(args: argparse.Namespace) -> list[str]:
    """The --task values (default: category), checked against --lang before any model loads."""
    tasks = args.task or [DEFAULT_TASK]
    resolve_tasks(tasks, args.lang)
    return tasks


def batch_options() -> argparse.ArgumentParser:
    """--max-batch: the (region, task) rows decoded together, passed to `load_model`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--max-batch", type=int, default=None, metavar="N",
                        help="(region, task) sequences decoded together (default: 16 on the CPU, from free memory "
                             "on a GPU)")
    return parser


def checked_max_batch(args: argparse.Namespace) -> int | None:
    if args.max_batch is not None and args.max_batch < 1:
        raise SettingsError(f"--max-batch must be >= 1, got {args.max_batch}")
    return args.max_batch


def everything_options() -> argparse.ArgumentParser:
    """--everything and the AutoMaskSettings it runs with (SAM 2's automatic mask generation)."""
    defaults = AutoMaskSettings()
    parser = argparse.ArgumentParser(add_help=False)
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
    return parser


def settings_from(args: argparse.Namespace, cls: type[Settings]) -> Settings:
    """`cls` (a settings dataclass) from the options named like its fields; the others keep their defaults."""
    given = vars(args)
    return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})


# --------------------------------------------------------------------------------------------- prompts

def _numbers(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise PromptError(f"{what} {text!r} must be {count} comma-separated numbers") from None
    if len(values) != count:
        raise PromptError(f"{what} {text!r} must be {count} comma-separated numbers, got {len(values)}")
    return values


def box_region(text: str) -> Region:
    """`X0,Y0,X1,Y1` in pixels."""
    return Region.from_box(_numbers(text, 4, "box"))


def points_region(texts: Sequence[str]) -> Region:
    """One region from every `X,Y,LABEL` point (label 1 positive, 0 negative)."""
    points, labels = [], []
    for text in texts:
        x, y, label = _numbers(text, 3, "point")
        if label not in (0, 1):
            raise PromptError(f"point {text!r}: the label (third number) must be 1 (positive) or 0 (negative)")
        points.append((x, y))
        labels.append(int(label))
    return Region.from_points(points, labels)


# ------------------------------------------------------------------------------------------------ model

def model_source(args: argparse.Namespace) -> ModelSource:
    """The weights and device the model options name."""
    return ModelSource(model=args.model, sam2=args.sam2, sam2_config=args.sam2_config, device=args.device,
                       dtype=args.dtype, local_files_only=True if args.local_files_only else None)


def load_model(args: argparse.Namespace, **options) -> PAM:
    """PAM on the weights the model options name, through the library's one loading path; `options` go to
    `pam_core.load_pam` (max_batch, cache_size)."""
    source = model_source(args)
    start = time.time()
    log(f"loading PAM ({source.model}) ...")
    pam = load_pam(source, **options)
    log(f"loaded in {time.time() - start:.1f} s on {pam.model.device}")
    return pam
