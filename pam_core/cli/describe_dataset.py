"""`pam describe-dataset SOURCE --out DIR`: every image of a folder, glob or manifest through the streaming engine
(`PAM.describe_stream`), one row per region into Parquet or JSONL part files.

The whole source is checked before the model loads. A re-run of the same command skips the images that have
rows and never writes a row twice; a killed run loses at most the images in flight; Ctrl-C keeps what finished
(exit status 130). Folder layout and resume rules: `pam_core.datasets.output`.
"""

from __future__ import annotations

import inspect
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..automask import AutoMaskSettings
from ..datasets import FORMATS, PART_IMAGES, DatasetOutput, DatasetSource, SourceRow, image_rows, open_source
from ..engine import PAM
from ..errors import SettingsError
from ..generation import GenerationSettings
from ..stream import StreamProgress, check_stream_settings, describe_stream
from ..tasks import resolve_tasks
from . import common

_STREAM_DEFAULTS = inspect.signature(describe_stream).parameters  # the engine's defaults, shown in --help


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "describe-dataset",
        parents=[common.model_options(), common.decoding_options(), common.sampling_options(), common.task_options(),
                 common.batch_options(), common.everything_options(), common.concept_options()],
        help="describe every image of a folder, glob or manifest into Parquet (or JSONL), resumably",
        description="SOURCE is a folder (searched recursively for image files), a glob in quotes, or a manifest "
                    "(.jsonl, .csv, .parquet) with one row per image: 'image', optional 'id' and optional "
                    "'regions'. Images without regions need --everything or --find. The same command again "
                    "resumes.")
    parser.add_argument("source", metavar="SOURCE",
                        help="folder, glob ('photos/**/*.jpg') or manifest (.jsonl, .ndjson, .csv, .parquet)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: part files, _SUCCESS when every image has its rows")
    parser.add_argument("--format", default="parquet", choices=FORMATS, help="part file format (default: parquet)")
    parser.add_argument("--part-size", type=int, default=PART_IMAGES, metavar="N",
                        help="images per part file (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    group = parser.add_argument_group("streaming", "how the engine keeps the model busy (pam_core.describe_stream)")
    group.add_argument("--workers", type=int, default=_STREAM_DEFAULTS["workers"].default, metavar="N",
                       help="threads reading and preprocessing images (default: %(default)s)")
    group.add_argument("--lookahead", type=int, default=_STREAM_DEFAULTS["lookahead"].default, metavar="N",
                       help="images read ahead of the model (default: %(default)s)")
    group.add_argument("--encoder-batch", type=int, default=None, metavar="N",
                       help="images SAM 2 encodes together (default: 1 on the CPU, 8 on a GPU)")
    group.add_argument("--compile", action="store_true",
                       help="decode with torch.compile'd LLM steps: the first batch compiles (about a minute on a "
                            "GPU), then decoding is faster; the same tokens in float32")
    parser.set_defaults(run=run)


def run(args) -> int:
    # every bad option and every malformed source row fails before the slow model load
    tasks = common.checked_tasks(args)
    generation = common.settings_from(args, GenerationSettings)
    auto = common.settings_from(args, AutoMaskSettings)
    check_stream_settings(common.checked_max_batch(args), args.encoder_batch, args.workers, args.lookahead)
    concepts = common.concepts_of(args)
    if concepts and args.everything:
        raise SettingsError("--find and --everything both find the regions of rows without any: give one")
    # Rows without regions get them from an automatic mode: --everything (SAM 2) or --find (SAM 3).
    source = open_source(args.source, needs_regions=not (args.everything or concepts))
    ids = source.check()
    task_keys = [task.key for task in resolve_tasks(tasks, args.lang)]
    model = common.model_source(args).name
    settings = {"tasks": task_keys, "lang": args.lang, "model": model, "dtype": args.dtype,
                "generation": asdict(generation), "everything": asdict(auto) if args.everything else None,
                "find": {"concepts": concepts, "threshold": args.find_threshold, "max_instances": args.max_instances,
                         "sam3": args.sam3} if concepts else None}

    start = time.time()
    with DatasetOutput(Path(args.out), task_keys, args.format, settings, args.part_size) as output:
        if output.recovered:
            common.log(f"recovered {output.recovered} image(s) from the journal of an interrupted run")
        todo = sum(image_id not in output.finished for image_id in ids)
        common.log(f"{len(ids)} image(s) in {source.kind} {args.source}: {len(ids) - todo} described earlier, "
                   f"{todo} to describe")
        if todo:
            pam = common.load_model(args, max_batch=args.max_batch, cache_size=0, compile_decoder=args.compile)
            if concepts:
                pam.sam3 = common.concept_finder(args)
            _describe(pam, source, output, todo, args, tasks, generation, auto, concepts, model, task_keys, start)
    if output.succeed(ids):
        common.log(f"every image has its rows: wrote {Path(args.out) / '_SUCCESS'}")
    return 0


def _describe(pam: PAM, source: DatasetSource, output: DatasetOutput, todo: int, args, tasks, generation, auto,
              concepts: list[str], model: str, task_keys: list[str], start: float) -> None:
    """The images without rows through the stream, each one's rows into the journal as soon as it finishes."""
    from tqdm import tqdm

    pending: dict[int, SourceRow] = {}  # stream index -> source row, for the images in flight

    def items():
        for index, row in enumerate(row for row in source.rows() if row.id not in output.finished):
            pending[index] = row
            yield row.stream_item(concepts)

    done = {"images": 0, "regions": 0, "failed": 0}
    with tqdm(total=todo, desc="describe-dataset", unit="image", file=sys.stderr, dynamic_ncols=True,
              disable=args.no_progress) as bar:
        def progress(p: StreamProgress) -> None:
            bar.set_postfix_str(f"{p.regions_per_s:.2f} regions/s, {p.failed} failed", refresh=False)

        stream = pam.describe_stream(items(), task=tasks, lang=args.lang, generation=generation, auto=auto,
                                     encoder_batch=args.encoder_batch, workers=args.workers,
                                     lookahead=args.lookahead, progress=progress,
                                     find_threshold=args.find_threshold, max_instances=args.max_instances)
        try:
            for result in stream:
                row = pending.pop(result.index)
                output.add(row.id, image_rows(result, row, model, args.lang, task_keys))
                done["images"] += 1
                done["regions"] += len(result.regions)
                done["failed"] += not result.ok
                bar.update(1)
        except KeyboardInterrupt:
            common.log(f"interrupted: the {output.added} image(s) described so far are kept in {args.out}; the "
                       "same command again describes the rest")
            raise
        finally:
            stream.close()
    common.log(f"described {done['images']} image(s), {done['regions']} region(s), {done['failed']} failed, in "
               f"{time.time() - start:.1f} s")
