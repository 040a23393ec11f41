"""`pam describe-dataset SOURCE --out DIR`: every image of a folder, glob or manifest through the streaming engine
(`PAM.describe_stream`), one row per region into Parquet or JSONL part files; with `--ray`, on an actor pool of a
Ray cluster (`pam_core.datasets.ray_backend`), written by this process the same way.

The whole source is checked before the model loads. A re-run of the same command skips the images that have
rows and never writes a row twice; a killed run loses at most the images in flight; Ctrl-C keeps what finished
(exit status 130). Folder layout and resume rules: `pam_core.datasets.output`.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

from ..automask import AutoMaskSettings
from ..datasets import FORMATS, PART_IMAGES, DatasetOutput, DescribeJob, RayWorkers, describe_on_ray, open_source
from ..datasets.ray_backend import import_ray
from ..errors import SettingsError
from ..generation import GenerationSettings
from ..stream import describe_stream
from . import common

_STREAM_DEFAULTS = inspect.signature(describe_stream).parameters  # the engine's defaults, shown in --help
_RAY_DEFAULTS = RayWorkers()


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
    group.add_argument("--read-threads", type=int, default=_STREAM_DEFAULTS["read_threads"].default, metavar="N",
                       help="threads reading and preprocessing images (default: %(default)s)")
    group.add_argument("--lookahead", type=int, default=_STREAM_DEFAULTS["lookahead"].default, metavar="N",
                       help="images read ahead of the model (default: %(default)s)")
    group.add_argument("--encoder-batch", type=int, default=None, metavar="N",
                       help="images SAM 2 encodes together (default: 1 on the CPU, 8 on a GPU)")
    group.add_argument("--compile", action="store_true",
                       help="decode with torch.compile'd LLM steps: the first batch compiles (about a minute on a "
                            "GPU), then decoding is faster; the same tokens in float32")
    ray = parser.add_argument_group("Ray", "several model workers on a Ray cluster (pip install 'pam-suite[ray]'); "
                                           "docs/scale.md")
    ray.add_argument("--ray", metavar="ADDRESS",
                     help="'local' (start Ray in this process), 'auto' (the cluster of this machine) or the address "
                          "of a cluster (host:port, ray://host:port)")
    ray.add_argument("--workers", type=int, default=None, metavar="N",
                     help=f"model workers (Ray actors), each loading PAM once (default: {_RAY_DEFAULTS.workers})")
    ray.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                     help=f"GPUs of each worker; 0 runs on CPUs (default: {_RAY_DEFAULTS.gpus_per_worker:g})")
    ray.add_argument("--cpus-per-worker", type=float, default=None, metavar="C",
                     help=f"CPUs of each worker (default: {_RAY_DEFAULTS.cpus_per_worker:g})")
    ray.add_argument("--ray-batch", type=int, default=None, metavar="N",
                     help="images a worker describes per call; a killed worker redoes at most these "
                          f"(default: {_RAY_DEFAULTS.batch_size})")
    parser.set_defaults(run=run)


def run(args) -> int:
    # every bad option and every malformed source row fails before the slow model load
    concepts = common.concepts_of(args)
    if concepts and args.everything:
        raise SettingsError("--find and --everything both find the regions of rows without any: give one")
    job = DescribeJob(
        common.model_source(args), tuple(common.checked_tasks(args)), args.lang,
        common.settings_from(args, GenerationSettings), everything=args.everything,
        auto=common.settings_from(args, AutoMaskSettings), concepts=tuple(concepts),
        find_threshold=args.find_threshold, max_instances=args.max_instances, sam3=args.sam3,
        max_batch=common.checked_max_batch(args), encoder_batch=args.encoder_batch, read_threads=args.read_threads,
        lookahead=args.lookahead, compile_decoder=args.compile)
    workers = _ray_workers(args)
    # Rows without regions get them from an automatic mode: --everything (SAM 2) or --find (SAM 3).
    source = open_source(args.source, needs_regions=not (args.everything or concepts))
    ids = source.check()

    start = time.time()
    with DatasetOutput(Path(args.out), job.task_keys, args.format, job.settings(), args.part_size) as output:
        if output.recovered:
            common.log(f"recovered {output.recovered} image(s) from the journal of an interrupted run")
        todo = sum(image_id not in output.finished for image_id in ids)
        common.log(f"{len(ids)} image(s) in {source.kind} {args.source}: {len(ids) - todo} described earlier, "
                   f"{todo} to describe")
        if todo:
            rows = (row for row in source.rows() if row.id not in output.finished)
            if workers is None:
                described = _in_process(job, rows)
            else:
                common.log(f"on Ray ({workers.address}): {workers.workers} worker(s), "
                           f"{workers.gpus_per_worker:g} GPU(s) and {workers.cpus_per_worker:g} CPU(s) each")
                described = _each_image(describe_on_ray(rows, job, workers))
            _write(described, output, todo, args, start)
    if output.succeed(ids):
        common.log(f"every image has its rows: wrote {Path(args.out) / '_SUCCESS'}")
    return 0


def _ray_workers(args) -> RayWorkers | None:
    """The Ray settings, or None for a run in this process (where the worker options are refused)."""
    given = {name: value for name, value in (("workers", args.workers), ("gpus_per_worker", args.gpus_per_worker),
                                             ("cpus_per_worker", args.cpus_per_worker),
                                             ("batch_size", args.ray_batch)) if value is not None}
    if args.ray is None:
        if given:
            flags = ", ".join("--" + {"batch_size": "ray-batch"}.get(name, name.replace("_", "-")) for name in given)
            raise SettingsError(f"{flags} set(s) the workers of a Ray run: add --ray local (this machine) or "
                                "--ray ADDRESS (a cluster)")
        return None
    workers = RayWorkers(args.ray, **given)
    import_ray()  # a missing extra is one line now, not after the source is read
    return workers


def _each_image(calls: Iterator[list[tuple[str, list]]]) -> Iterator[tuple[str, list]]:
    """Ray's results a call at a time as (image id, rows) one image at a time; closing this closes Ray's run."""
    with closing(calls):
        for call in calls:
            yield from call


def _in_process(job: DescribeJob, rows) -> Iterator[tuple[str, list]]:
    common.log(f"loading PAM ({job.source.model}) ...")
    loaded = time.time()
    pam = job.load()
    common.log(f"loaded in {time.time() - loaded:.1f} s on {pam.model.device}")
    for row, result in job.describe(pam, rows):
        yield row.id, job.rows(row, result)


def _write(described: Iterator[tuple[str, list]], output: DatasetOutput, todo: int, args, start: float) -> None:
    """Each finished image's rows into the output as it comes, with a progress bar."""
    from tqdm import tqdm

    done = {"images": 0, "regions": 0, "failed": 0}
    with tqdm(total=todo, desc="describe-dataset", unit="image", file=sys.stderr, dynamic_ncols=True,
              disable=args.no_progress) as bar:
        try:
            for image_id, rows in described:
                output.add(image_id, rows)
                done["images"] += 1
                done["regions"] += sum(row["region"] is not None for row in rows)
                done["failed"] += rows[0]["error"] is not None
                bar.set_postfix_str(f"{done['regions'] / max(bar.format_dict['elapsed'], 1e-9):.2f} regions/s, "
                                    f"{done['failed']} failed", refresh=False)
                bar.update(1)
        except KeyboardInterrupt:
            common.log(f"interrupted: the {output.added} image(s) described so far are kept in {args.out}; the "
                       "same command again describes the rest")
            raise
        finally:
            described.close()
    common.log(f"described {done['images']} image(s), {done['regions']} region(s), {done['failed']} failed, in "
               f"{time.time() - start:.1f} s")
