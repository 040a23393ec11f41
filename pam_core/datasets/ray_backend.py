"""Dataset runs on a Ray cluster: the rows become a Ray Dataset, `map_batches` runs them on an actor pool in which
each actor loads PAM once and describes its batches through the streaming engine (`DescribeJob.describe`), and
the driver receives each image's output rows as batches finish.

Ray schedules, retries and restarts; nothing here does. A worker process that dies is restarted by Ray and its
batch is run again (Ray Data's actor pools retry without limit), so an image's rows reach the driver once, from
the run that finished it. Writing them (journal, parts, resume) stays with the driver, exactly as in a
single-process run (`DatasetOutput`).

Ray is the optional extra `pam-suite[ray]`. Weights must be readable where the workers run: a path every node
sees, or the Hub cache of each node; the driver's Hugging Face settings (HF_HUB_OFFLINE, HF_HOME, ...) travel
with the workers, so nothing is downloaded that the driver would not download.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..errors import DatasetError, PAMError, SettingsError
from .job import DescribeJob
from .sources import SourceRow

RAY_EXTRA = "pam-suite[ray]"
LOCAL, AUTO = "local", "auto"
# What the workers inherit from the driver: where the Hub cache is and whether it may download.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_TOKEN")


@dataclass(frozen=True)
class RayWorkers:
    """Where and on what the actors run. `address`: "local" (a Ray started in this process, stopped at the end),
    "auto" (the cluster this machine belongs to) or a cluster address (host:port or ray://host:port). Each of
    `workers` actors holds one model and gets `cpus_per_worker` CPUs and `gpus_per_worker` GPUs; it describes
    at most `batch_size` images per call (a killed worker loses at most that call), fewer when the rows would not
    give every worker a call."""

    address: str = AUTO
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    batch_size: int = 16

    def __post_init__(self):
        if not isinstance(self.address, str) or not self.address.strip():
            raise SettingsError(f"the Ray address must be 'local', 'auto' or host:port, got {self.address!r}")
        if self.workers < 1 or self.batch_size < 1:
            raise SettingsError(f"workers and the Ray batch size must be >= 1, got {self.workers} and "
                                f"{self.batch_size}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise SettingsError(f"GPUs per worker must be >= 0 and CPUs per worker > 0, got {self.gpus_per_worker} "
                                f"and {self.cpus_per_worker}")


def import_ray():
    """The `ray` module, or one line naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SettingsError(f"Ray is not installed: pip install '{RAY_EXTRA}'") from None
    return ray


def describe_on_ray(rows: Iterable[SourceRow], job: DescribeJob,
                    workers: RayWorkers) -> Iterator[list[tuple[str, list]]]:
    """(image id, output rows) for every row, a list per Ray call as calls finish (at most `workers.batch_size`
    images each: a host that reads its records back can read a call's at once). Connects to `workers.address`
    unless Ray is already initialized in this process; what it initialized is shut down when the iterator ends or is
    closed (Ctrl-C), which also stops the actors."""
    ray = import_ray()
    rows = list(rows)
    if not rows:
        return
    if workers.address == LOCAL:  # the workers read this machine's files: a bad path is one line now, not dead actors
        job.check_local_weights()
    initialized = _connect(ray, workers.address)
    context = ray.data.DataContext.get_current()
    shown = context.enable_progress_bars, context.print_on_execution_start
    try:
        context.enable_progress_bars = context.print_on_execution_start = False  # the caller shows progress
        # Calls of at most batch_size images, and at least one per worker; one call in flight per worker, so that a
        # call waits for a free worker instead of queueing behind a busy one (Ray Data's default is 4 in flight).
        per_call = max(1, min(workers.batch_size, -(-len(rows) // workers.workers)))
        pool = ray.data.ActorPoolStrategy(size=workers.workers, max_tasks_in_flight_per_actor=1)
        # rows travel pickled, as Ray would pickle them anyway (a host's rows may hold Region objects)
        items = ray.data.from_items([{"row": pickle.dumps(row)} for row in rows],
                                    override_num_blocks=-(-len(rows) // per_call))
        described = items.map_batches(
            _Describer, fn_constructor_kwargs={"job": job, "folder": os.getcwd()}, batch_size=per_call,
            batch_format="numpy", compute=pool, num_cpus=workers.cpus_per_worker,
            num_gpus=workers.gpus_per_worker or None, runtime_env={"env_vars": _forwarded_env()})
        try:
            for batch in described.iter_batches(batch_size=None, batch_format="numpy"):
                yield [(str(image_id), json.loads(lines)) for image_id, lines in zip(batch["id"], batch["rows"])]
        except ray.exceptions.RayError as exc:
            raise _clear(exc) from None
    finally:
        context.enable_progress_bars, context.print_on_execution_start = shown  # a host's own Ray jobs keep theirs
        if initialized:
            ray.shutdown()


class _Describer:
    """The callable class of the actor pool: PAM loaded once per actor, each batch through the stream."""

    def __init__(self, job: DescribeJob, folder: str):
        if os.path.isdir(folder):  # relative paths (images, masks, weights) are the driver's: start where it is
            os.chdir(folder)
        self.job = job
        self.pam = job.load()

    def __call__(self, batch: dict) -> dict:
        ids, lines = [], []
        for row, result in self.job.describe(self.pam, map(pickle.loads, batch["row"])):
            ids.append(row.id)
            lines.append(json.dumps(self.job.rows(row, result), ensure_ascii=False))
        return {"id": ids, "rows": lines}


def _connect(ray, address: str) -> bool:
    """Initializes Ray unless it is; True when this did (a local Ray started, or a cluster joined), so that the
    run ends it again. A Ray the caller initialized is used as it is and left running."""
    if ray.is_initialized():
        return False
    options = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        if address == LOCAL:
            ray.init(**options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "no running Ray cluster was found on this machine" if address == AUTO else f"at {address}: {exc}"
        raise DatasetError(f"cannot connect to Ray ({where}); start one with `ray start --head`, give its "
                           "address, or use --ray local") from None
    return True


def _forwarded_env() -> dict:
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def _clear(error: Exception) -> PAMError:
    """A Ray failure as one clear error. Ray passes a worker's exception on as text: its last line, e.g.
    "pam_core.errors.WeightsNotFoundError: PAM checkpoint folder not found: ...", says what went wrong."""
    lines = str(error).strip().splitlines()
    last = lines[-1].strip() if lines else type(error).__name__
    kind, _, message = last.partition(": ")
    if kind.startswith("pam_core.errors.") and message:
        return DatasetError(f"a Ray worker failed: {message}")
    return DatasetError(f"the Ray run failed: {last}")
