"""A describe_regions run split into K delegated operations (one per shard of the samples): the shard rule, the
queued operations, and two real `fiftyone delegated launch` workers running them on the session's mongod."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext, ExecutionError
from PIL import Image

from fiftyone_plugin import apply_pam, queue_pam_shards
from fiftyone_plugin.shards import Shard, check_shards
from helpers import CHECKPOINT, FIXTURE, REPO, SAM2, needs_fixture
from helpers import FIFTYONE_PLUGIN as PLUGIN

pytestmark = [pytest.mark.host, needs_fixture]
DESCRIBE = f"{PLUGIN}/describe_regions"
TOKENS = 4
BOX = [80 / 640, 120 / 480, 180 / 640, 210 / 480]  # the fixture image's red rectangle, relative


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_shards_are_disjoint_and_complete(count):
    ids = [str(ObjectId()) for _ in range(200)]
    picked = [Shard(index, count).pick(ids) for index in range(count)]
    assert sorted(sum(picked, [])) == sorted(ids)  # every id in exactly one shard
    assert all(Shard(index, count).pick(reversed(ids)) == list(reversed(picked[index])) for index in range(count))
    if count > 1:
        assert all(picked)  # 200 ids spread over every shard


@pytest.mark.parametrize("shards, message", [
    (0, "1 or more"), (-2, "1 or more"), ("4", "whole number"), (2.5, "whole number"), (True, "whole number"),
    (None, "whole number"),
])
def test_bad_shard_counts_are_refused(shards, message):
    with pytest.raises(ValueError, match=message):
        check_shards(shards)
    with pytest.raises(ValueError, match="shard must be a whole number from 0 to 2"):
        Shard(3, 3)


def small_images(folder: Path, count: int) -> list[Path]:
    """`count` different small images: the fixture image shifted, mirrored and shrunk."""
    source = Image.open(FIXTURE / "inputs" / "image.png").convert("RGB")
    paths = []
    for i in range(count):
        image = source.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if i % 2 else source
        image = image.rotate(0, translate=(i * 7, i * 3)).resize((320, 240))
        paths.append(folder / f"image_{i:02d}.png")
        image.save(paths[-1])
    return paths


def boxes_dataset(paths, name) -> fo.Dataset:
    dataset = fo.Dataset(name, overwrite=True)
    dataset.persistent = True  # shared with the workers
    dataset.add_samples([fo.Sample(filepath=str(path), ground_truth=fo.Detections(
        detections=[fo.Detection(label="rectangle", bounding_box=BOX)])) for path in paths])
    return dataset


SETTINGS = dict(prompt_field="ground_truth", tasks=["category"], label_field="pam", model=str(CHECKPOINT),
                sam2=str(SAM2), max_new_tokens=TOKENS)


def test_queue_pam_shards_records_once_and_queues_one_operation_per_shard(tmp_path):
    dataset = boxes_dataset(small_images(tmp_path, 3), "pam-shards-queued")
    view = dataset.limit(2)
    service = DelegatedOperationService()
    with pytest.raises(ValueError, match="1 or more"):
        queue_pam_shards(view, shards=0, **SETTINGS)
    assert "pam" not in dataset.get_field_schema() and not service.list_operations(dataset_name=dataset.name)

    queued = queue_pam_shards(view, shards=3, **SETTINGS)
    try:
        dataset.reload()
        assert dataset.info["pam_runs"]["pam"] == {"prompt_field": "ground_truth", "tasks": ["category"],
                                                   "lang": "en", "model": CHECKPOINT.name}
        assert {"pam", "pam_error"} <= set(dataset.get_field_schema())
        assert len(dataset.exists("pam")) == 0  # nothing described yet
        operations = [service.get(ObjectId(op_id)) for op_id in queued]
        assert [op.run_state for op in operations] == ["queued"] * 3
        assert [op.label for op in operations] == [f"PAM: describe regions (shard {i}/3)" for i in (1, 2, 3)]
        for index, operation in enumerate(operations):
            request = operation.context.request_params
            assert operation.operator == DESCRIBE and request["delegated"] is True
            assert request["view"] == view._serialize() and request["dataset_name"] == dataset.name
            assert request["params"]["shard"] == index and request["params"]["shards"] == 3
            assert request["params"]["model"] == str(CHECKPOINT)
    finally:
        for op_id in queued:
            service.delete_operation(ObjectId(op_id))

    with pytest.raises(ValueError, match="other settings"):  # checked before anything is queued
        queue_pam_shards(view, shards=2, **{**SETTINGS, "tasks": ["brief"]})
    # queueing is quick, so a view of any size may queue its shards right away
    operator = foo.get_operator(DESCRIBE)
    many = boxes_dataset(small_images(tmp_path, 1) * 20, "pam-shards-many")
    for params, immediate in (({}, False), ({"shards": 4}, True)):
        ctx = ExecutionContext(request_params=dict(dataset_name=many.name, params=params))
        options = operator.resolve_execution_options(ctx).to_dict()
        assert options["allow_immediate_execution"] is immediate and options["allow_delegated_execution"]
        assert options["default_choice_to_delegated"] is not immediate
    assert "shards" in operator.resolve_input(ctx).to_json()["type"]["properties"]
    many.delete()

    for shards in (0, -1):
        with pytest.raises(ExecutionError, match=f"shards must be 1 or more .*not {shards}"):
            foo.execute_operator(DESCRIBE, ctx=dict(dataset=dataset, params={**SETTINGS, "shards": shards}))
    assert not service.list_operations(dataset_name=dataset.name)


def start_worker(log: Path, env: dict) -> subprocess.Popen:
    """A `fiftyone delegated launch` process (in a session of its own, with whatever it starts), its output in
    `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen([str(Path(sys.executable).with_name("fiftyone")), "delegated", "launch"], env=env,
                                cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def worker_env(tmp_path: Path) -> dict:
    return {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # the launcher's loop ends on KeyboardInterrupt
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}:\n{log.read_text(errors='replace')[-4000:]}" for log in logs)
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(0.25)


@pytest.mark.slow
def test_two_delegated_workers_label_every_sample_once_as_one_process_does(tmp_path):
    count, shards = 10, 4
    dataset = boxes_dataset(small_images(tmp_path, count), "pam-shards-workers")
    reference = dataset.clone("pam-shards-reference")
    env = worker_env(tmp_path)
    logs = [tmp_path / "worker_a.log", tmp_path / "worker_b.log"]
    workers = []
    service = DelegatedOperationService()
    try:
        workers = [start_worker(log, env) for log in logs]
        # the single-process run to compare with, while the workers start
        apply_pam(reference, **{**SETTINGS, "tasks": "category"}, local_files_only=True)
        wait_for(lambda: all("Delegated operation service running" in log.read_text() for log in logs), 120,
                 "both workers to start", logs)

        result = foo.execute_operator(DESCRIBE, ctx=dict(dataset=dataset, params={**SETTINGS, "shards": shards}))
        assert result.error is None, result.error
        operations = service.list_operations(operator=DESCRIBE, dataset_name=dataset.name)
        assert len(operations) == shards

        def states():
            return [service.get(op.id).run_state for op in operations]

        wait_for(lambda: all(state in ("completed", "failed") for state in states()), 150,
                 f"the {shards} shard operations to finish", logs)
        failed = [service.get(op.id).result for op in operations if service.get(op.id).run_state == "failed"]
        assert not failed, failed
    finally:
        for worker in workers:
            stop(worker)

    # FiftyOne does not record which process ran an operation (run_link is None for local workers); each worker logs
    # the ids it ran, which tells.
    ran = [set(re.findall(r"Running operation (\w+)", log.read_text())) for log in logs]
    assert ran[0] | ran[1] == {str(op.id) for op in operations} and not ran[0] & ran[1], ran
    assert ran[0] and ran[1], "both workers ran shards"

    # each operation's last progress says how many samples its shard had: together all of them, each once
    done = [re.fullmatch(r"PAM: (\d+)/(\d+) samples", service.get(op.id).status.label).groups() for op in operations]
    assert all(first == second for first, second in done) and sum(int(total) for _, total in done) == count, done

    dataset.reload()
    assert len(dataset) == count and len(dataset.exists("pam")) == count
    assert "pam.detections.pam_model" in dataset.get_field_schema(flat=True)  # the workers declared the attributes
    assert dataset.distinct("pam_error") == [] and len(dataset.exists("pam_error")) == 0
    assert dataset.count("pam.detections") == count  # one box, one region, per sample: none lost, none twice

    def texts(collection):
        return dict(zip(collection.values("filepath"), collection.values("pam.detections.label")))

    assert texts(dataset) == texts(reference)
    assert dataset.distinct("pam.detections.pam_model") == [CHECKPOINT.name]

    # A re-queued shard (as after its worker died) resumes: its samples are done, so it writes nothing.
    written = dict(zip(*dataset.values(["id", "last_modified_at"])))
    rerun = service.rerun_operation(operations[0].id)
    service.execute_queued_operations(operator=DESCRIBE, dataset_name=dataset.name)
    assert service.get(rerun.id).run_state == "completed"
    assert dict(zip(*dataset.values(["id", "last_modified_at"]))) == written
    service.delete_for_dataset(dataset._doc.id)
    dataset.delete()
    reference.delete()


@pytest.mark.slow
def test_a_killed_workers_shard_is_failed_requeued_and_redoes_only_what_it_had_not_saved(tmp_path):
    """The recovery docs/scale.md gives: a worker SIGKILLed mid-shard leaves its operation running; `fiftyone
    delegated fail ID`, then `fiftyone delegated rerun ID`, queue it again, and the re-queued shard describes only
    the samples the killed worker had not saved, leaving the saved ones as they were."""
    count = 40  # more than one bulk write (16 samples), so that the kill lands between two of them
    dataset = boxes_dataset(small_images(tmp_path, 4) * 10, "pam-shards-killed")
    service = DelegatedOperationService()
    log = tmp_path / "worker.log"
    worker = start_worker(log, worker_env(tmp_path))
    try:
        [op_id] = queue_pam_shards(dataset, shards=1, **SETTINGS)
        wait_for(lambda: len(dataset.exists("pam")) >= 16, 240, "the worker's first bulk write", [log])
        os.killpg(worker.pid, signal.SIGKILL)  # the launcher and any process it started for the operation
        worker.wait(30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    saved = dict(zip(*dataset.exists("pam").values(["id", "last_modified_at"])))
    assert 16 <= len(saved) < count and len(saved) % 16 == 0, len(saved)  # whole bulk writes only
    assert service.get(ObjectId(op_id)).run_state == "running"  # FiftyOne does not notice a dead worker

    cli = str(Path(sys.executable).with_name("fiftyone"))
    env = worker_env(tmp_path)
    subprocess.run([cli, "delegated", "fail", op_id], env=env, check=True, capture_output=True)
    assert service.get(ObjectId(op_id)).run_state == "failed"
    rerun = subprocess.run([cli, "delegated", "rerun", op_id], env=env, check=True, capture_output=True, text=True)
    [new_id] = re.findall(r"rerun operation with ID '(\w+)'", rerun.stdout)
    service.execute_queued_operations(operator=DESCRIBE, dataset_name=dataset.name)
    operation = service.get(ObjectId(new_id))
    assert operation.run_state == "completed", operation.result
    assert operation.status.label == f"PAM: {count - len(saved)}/{count - len(saved)} samples"  # only the rest

    after = dict(zip(*dataset.values(["id", "last_modified_at"])))
    assert all(after[i] == saved[i] for i in saved)  # what the killed worker saved was not written again
    assert len(dataset.exists("pam")) == count and dataset.count("pam.detections") == count  # none lost, none twice
    assert len(dataset.exists("pam_error")) == 0
    service.delete_for_dataset(dataset._doc.id)
    dataset.delete()
