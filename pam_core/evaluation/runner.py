"""`pam eval`: predict what is missing (resumably), score, and write metrics.json / scores.jsonl.

`predictions.jsonl` in the output folder gets one line per region as soon as its image (or video event) is
done, so an interrupted run picks up where it stopped. Nothing of another run is ever scored: `run.json`
records the model, task and decoding, and every line records a key of its region's input (the given
prediction, or the image or frames and region prompt, and for a video event the previous event's prediction
it was conditioned on), so a resume with other settings or another annotation is refused.

Video regions (`frames`) are captioned with PAM's video task, one clip per region. The events of one `video`
run in `event` order, each conditioned on the previous event's prediction, as PAM's streaming protocol does;
a resumed run conditions the next event on the stored prediction, so it gives the texts of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..generation import GenerationSettings
from ..io import write_atomic, write_json
from ..stream import StreamItem
from ..tasks import VIDEO_CAPTION
from .annotations import Annotation
from .metrics import (
    CAPTION_METRICS,
    DEFAULT_TASKS,
    RECOGNITION_METRICS,
    EvalError,
    SentenceEmbedder,
    caption_scores,
    mean,
    recognition_scores,
)

PREDICTIONS, RUN, METRICS, SCORES = "predictions.jsonl", "run.json", "metrics.json", "scores.jsonl"


@dataclass
class EvalRun:
    """What a set of predictions depends on; a resumed run must match it exactly."""

    kind: str
    model: Optional[str]
    task: str
    lang: str = "en"
    generation: dict = field(default_factory=dict)

    @classmethod
    def create(cls, kind: str, model: Optional[str], task: Optional[str] = None, lang: str = "en",
               generation: GenerationSettings = GenerationSettings()) -> "EvalRun":
        if kind not in DEFAULT_TASKS:
            raise EvalError(f"unknown evaluation {kind!r}; use one of {', '.join(DEFAULT_TASKS)}")
        return cls(kind, model, task or DEFAULT_TASKS[kind], lang, asdict(generation))


def read_predictions(path: Path) -> dict[str, dict]:
    """Predictions written so far. A last line cut short by an interruption is dropped from the file."""
    if not path.is_file():
        return {}
    done, good_bytes = {}, 0
    with open(path, "rb") as fh:
        lines = fh.readlines()
    for number, raw in enumerate(lines, 1):
        try:
            entry = json.loads(raw)
            if not raw.endswith(b"\n") or not isinstance(entry, dict) or not {"id", "prediction"} <= set(entry):
                raise ValueError("not a whole prediction line")
        except ValueError:
            if number == len(lines):
                with open(path, "r+b") as fh:
                    fh.truncate(good_bytes)
                break
            raise EvalError(f"{path}, line {number} is damaged; delete the file to predict everything again") from None
        done[str(entry["id"])] = entry
        good_bytes += len(raw)
    return done


def input_key(record: Annotation, history: Optional[str] = None) -> str:
    """What a region's prediction comes from: its given text, or its image or frames and region prompt, and for
    video frames the caption the prediction was conditioned on (`history`)."""
    if record.prediction is not None:
        source = {"prediction": record.prediction}
    else:
        source = {"image": record.image, "frames": record.frames, "region": record.region}
        if record.frames is not None:
            source["history"] = history
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]


def previous_events(records: Sequence[Annotation]) -> dict[str, Annotation]:
    """The event before each streaming event of `records`: the next lower `event` among its video's records."""
    by_video: dict[str, list[Annotation]] = {}
    for record in records:
        if record.video is not None:
            by_video.setdefault(record.video, []).append(record)
    previous = {}
    for events in by_video.values():
        events.sort(key=lambda r: r.event)
        previous.update((later.id, earlier) for earlier, later in zip(events, events[1:]))
    return previous


def _prediction(record: Annotation, done: dict[str, dict]) -> Optional[str]:
    """A region's prediction: given in the annotation, or made earlier (None while it has none)."""
    if record.prediction is not None:
        return record.prediction
    return done[record.id]["prediction"] if record.id in done else None


def _check_resume(out: Path, run: EvalRun, done: dict[str, dict], records: Sequence[Annotation],
                  previous: dict[str, Annotation]) -> None:
    """Refuse to reuse predictions the current run would not make (`previous`: each video event's previous
    event, see `previous_events`); then record the run's settings."""
    path = out / RUN
    if path.is_file() and done:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if recorded != asdict(run):
            changed = sorted(k for k in asdict(run) if recorded.get(k) != asdict(run)[k])
            raise EvalError(f"{out} holds predictions of a different run (changed: {', '.join(changed)}); "
                            f"use another --out or --restart")

    def still_valid(record: Annotation) -> bool:
        before = previous.get(record.id) if record.prediction is None else None
        history = _prediction(before, done) if before is not None else None
        if before is not None and history is None:
            return False  # made before its previous event had a prediction: from another history
        return done[record.id].get("input") == input_key(record, history)

    stale = [r.id for r in records if r.id in done and not still_valid(r)]
    if stale:
        raise EvalError(f"{out} holds predictions of another run: {len(stale)} region(s) (e.g. {stale[0]!r}) were "
                        "predicted from another given prediction, image, region or previous event than this "
                        "annotation file has; use another --out or --restart")
    write_json(path, asdict(run))


def _chunks(records: Sequence[Annotation], batch: int) -> list[list[Annotation]]:
    """Regions grouped by image (first-seen order), at most `batch` per group."""
    by_media: dict[str, list[Annotation]] = {}
    for record in records:
        by_media.setdefault(record.media_key, []).append(record)
    return [group[i:i + batch] for group in by_media.values() for i in range(0, len(group), batch)]


def predict(records: Sequence[Annotation], out: Path, run: EvalRun, load_pam: Callable[[], object],
            batch: int = 16, restart: bool = False, show_progress: bool = True) -> dict[str, dict]:
    """Every record's prediction: given in the annotation, already in predictions.jsonl, or from PAM now."""
    if batch < 1:
        raise EvalError(f"--batch must be at least 1, got {batch}")
    unpredicted = [r.id for r in records if r.frames is not None and r.prediction is None]
    if unpredicted and run.kind != "caption":
        raise EvalError(f"{len(unpredicted)} video region(s) (e.g. {unpredicted[0]}) have no 'prediction'; pam eval "
                        f"{run.kind} scores video regions from given predictions only (pam eval caption captions them)")
    out.mkdir(parents=True, exist_ok=True)
    path = out / PREDICTIONS
    if restart:
        path.unlink(missing_ok=True)
    done = read_predictions(path)
    previous = previous_events(records)
    _check_resume(out, run, done, records, previous)
    for stale in (METRICS, SCORES):  # they mark a finished run
        (out / stale).unlink(missing_ok=True)
    pending = [r for r in records if r.id not in done]
    given = [r for r in pending if r.prediction is not None]
    images = [r for r in pending if r.prediction is None and r.frames is None]
    videos = [r for r in pending if r.prediction is None and r.frames is not None]
    with open(path, "a", encoding="utf-8") as fh:
        def append(entries):
            for entry in entries:
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
                done[entry["id"]] = entry
            fh.flush()
            os.fsync(fh.fileno())

        append([{"id": r.id, "prediction": r.prediction, "source": "annotation", "input": input_key(r)}
                for r in given])
        if images or videos:
            prompts = _checked_prompts(images + videos)  # bad input fails here, before the slow model load
            pam = load_pam()
            with _progress_bar(run, len(images) + len(videos), show_progress) as bar:
                _describe_images(images, prompts, run, pam, batch, append, bar)
                # each event after the previous one of its video, whose prediction `append` has put in `done`;
                # in the order of an uninterrupted run, resumed or not
                waiting = {r.id for r in videos}
                for record in (r for r in _in_event_order(records) if r.id in waiting):
                    before = previous.get(record.id)
                    _describe_event(record, prompts[record.id], run, pam, append,
                                    _prediction(before, done) if before is not None else None)
                    bar.update(1)
    return done


def _checked_prompts(records: Sequence[Annotation]) -> dict[str, object]:
    missing = sorted({file for r in records for file in ([r.image] if r.image is not None else r.frames)
                      if not Path(file).is_file()})
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EvalError(f"image file not found: {missing[0]}{more}")
    return {r.id: r.prompt() for r in records}


def _progress_bar(run: EvalRun, total: int, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"pam eval {run.kind}", unit="region", file=sys.stderr, disable=not show,
                dynamic_ncols=True)


def _describe_images(records: Sequence[Annotation], prompts: dict, run: EvalRun, pam, batch: int, append,
                     bar) -> None:
    """Image regions through PAM's streaming engine: each image's regions (at most `batch` of them) go in as one
    item, so SAM 2 encodes the image once, and the regions of many images decode together. Results come out as
    they finish and are appended in item order, so predictions.jsonl reads as one call per image wrote it."""
    chunks = _chunks(records, batch)
    items = (StreamItem(chunk[0].image, [prompts[r.id] for r in chunk], id=chunk[0].id) for chunk in chunks)
    stream = pam.describe_stream(items, task=run.task, lang=run.lang, generation=GenerationSettings(**run.generation))
    finished, written = {}, 0
    with closing(stream):  # an error or Ctrl-C stops the engine's reader threads too
        for result in stream:
            finished[result.index] = result
            while written in finished:
                result, chunk = finished.pop(written), chunks[written]
                if not result.ok:  # pam_core's input errors: name the annotation
                    raise EvalError(f"annotation {chunk[0].id} ({chunk[0].image}): {result.error}")
                append([{"id": r.id, "prediction": res.text, "source": "pam", **res.fields, "input": input_key(r)}
                        for r, res in zip(chunk, result.regions)])
                bar.update(len(chunk))
                written += 1


def _describe_event(record: Annotation, prompt, run: EvalRun, pam, append, history: Optional[str]) -> None:
    """A video region's caption: PAM's video task over its frames as one clip (the prompt on its first frame),
    conditioned on `history`, the previous event's prediction (None for a video's first event)."""
    try:
        result = pam.describe_video(record.frames, [prompt], task=VIDEO_CAPTION, lang=run.lang,
                                    generation=GenerationSettings(**run.generation), history=history,
                                    keep_frames=False)
    except ValueError as exc:  # pam_core's input errors: name the annotation
        raise EvalError(f"annotation {record.id} (frames from {record.frames[0]}): {exc}") from exc
    (caption,) = result.captions  # one object, one segment: the whole clip
    append([{"id": record.id, "prediction": caption.text, "source": "pam", "history": history,
             "input": input_key(record, history)}])


def _in_event_order(records: Sequence[Annotation]) -> list[Annotation]:
    """The video regions of `records` video by video (first-seen order), each video's events in ascending
    `event` order."""
    by_video: dict[tuple, list[Annotation]] = {}
    for record in (r for r in records if r.frames is not None):
        by_video.setdefault(("video", record.video) if record.video is not None else ("region", record.id),
                            []).append(record)
    return [r for events in by_video.values() for r in sorted(events, key=lambda r: r.event or 0)]


def score(kind: str, records: Sequence[Annotation], predictions: dict[str, dict],
          embedder: Optional[SentenceEmbedder] = None, lang: str = "en") -> tuple[dict, dict[str, dict]]:
    """Aggregate metrics and per-region scores of `records` against their predictions (captions in `lang`)."""
    missing = [r.id for r in records if r.id not in predictions]
    if missing:
        raise EvalError(f"{len(missing)} region(s) have no prediction, e.g. {missing[0]}")
    texts = {r.id: predictions[r.id]["prediction"] for r in records}
    if kind == "recognition":
        embedder = embedder or SentenceEmbedder()
        # Osprey's sets have one category per region; extra references are ignored by the protocol.
        rows = recognition_scores([texts[r.id] for r in records], [r.refs[0] for r in records], embedder)
        per_region = {r.id: row for r, row in zip(records, rows)}
        metrics = {name: mean([row[name] for row in rows]) for name in RECOGNITION_METRICS}
        metrics["embedder"] = embedder.source
    elif kind == "caption":
        metrics, per_region = caption_scores({r.id: r.refs for r in records}, texts, lang)
    else:
        raise EvalError(f"unknown evaluation {kind!r}; use one of {', '.join(DEFAULT_TASKS)}")
    metrics["regions"] = len(records)
    return metrics, per_region


def write_results(out: Path, run: EvalRun, metrics: dict, per_region: dict[str, dict], annotations: str) -> None:
    write_json(out / METRICS, {"annotations": annotations, **asdict(run), "metrics": metrics})
    lines = "".join(json.dumps({"id": key, **values}) + "\n" for key, values in per_region.items())
    write_atomic(out / SCORES, lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))


def format_table(metrics: dict) -> str:
    names = [n for n in (*RECOGNITION_METRICS, *CAPTION_METRICS) if n in metrics]
    rows = [(n, f"{metrics[n]:.4f}") for n in names] + [("regions", str(metrics["regions"]))]
    width = max(len(n) for n, _ in rows)
    return "\n".join([f"{'metric':<{width}}  value"] + [f"{n:<{width}}  {v}" for n, v in rows])
