"""`pam eval`: predict what is missing (resumably), score, and write metrics.json / scores.jsonl.

`predictions.jsonl` in the output folder gets one line per region as soon as its image is done, so an
interrupted run picks up where it stopped. Nothing of another run is ever scored: `run.json` records the
model, task and decoding, and every line records a key of its region's input (the given prediction, or
the image and region prompt), so a resume with other settings or another annotation is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..generation import GenerationSettings
from ..io import write_atomic, write_json
from .annotations import Annotation
from .metrics import (CAPTION_METRICS, DEFAULT_TASKS, RECOGNITION_METRICS, EvalError, SentenceEmbedder,
                      caption_scores, mean, recognition_scores)

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


def input_key(record: Annotation) -> str:
    """What a region's prediction comes from: its given text, or its image(s) and region prompt."""
    source = {"prediction": record.prediction} if record.prediction is not None else \
        {"image": record.image, "frames": record.frames, "region": record.region}
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]


def _check_resume(out: Path, run: EvalRun, done: dict[str, dict], records: Sequence[Annotation]) -> None:
    """Refuse to reuse predictions the current run would not make; then record the run's settings."""
    path = out / RUN
    if path.is_file() and done:
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != asdict(run):
            changed = sorted(k for k in asdict(run) if previous.get(k) != asdict(run)[k])
            raise EvalError(f"{out} holds predictions of a different run (changed: {', '.join(changed)}); "
                            f"use another --out or --restart")
    stale = [r.id for r in records if r.id in done and done[r.id].get("input") != input_key(r)]
    if stale:
        raise EvalError(f"{out} holds predictions of another run: {len(stale)} region(s) (e.g. {stale[0]!r}) were "
                        "predicted from another given prediction, image or region than this annotation file has; "
                        "use another --out or --restart")
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
    out.mkdir(parents=True, exist_ok=True)
    path = out / PREDICTIONS
    if restart:
        path.unlink(missing_ok=True)
    done = read_predictions(path)
    _check_resume(out, run, done, records)
    for stale in (METRICS, SCORES):  # they mark a finished run
        (out / stale).unlink(missing_ok=True)
    pending = [r for r in records if r.id not in done]
    given = [r for r in pending if r.prediction is not None]
    to_run = [r for r in pending if r.prediction is None]
    videos = [r.id for r in to_run if r.frames is not None]
    if videos:
        raise EvalError(f"{len(videos)} video region(s) (e.g. {videos[0]}) have no 'prediction'; pam eval scores "
                        "video events from given predictions only (no video generation in this pam_core)")
    with open(path, "a", encoding="utf-8") as fh:
        def append(entries):
            for entry in entries:
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
                done[entry["id"]] = entry
            fh.flush()
            os.fsync(fh.fileno())

        append([{"id": r.id, "prediction": r.prediction, "source": "annotation", "input": input_key(r)}
                for r in given])
        if to_run:
            prompts = _checked_prompts(to_run)  # bad input fails here, before the slow model load
            _run_pam(to_run, prompts, run, load_pam(), batch, append, show_progress)
    return done


def _checked_prompts(records: Sequence[Annotation]) -> dict[str, object]:
    missing = sorted({r.image for r in records if not Path(r.image).is_file()})
    if missing:
        raise EvalError(f"image file not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return {r.id: r.prompt() for r in records}


def _run_pam(records, prompts: dict, run: EvalRun, pam, batch: int, append, show_progress: bool) -> None:
    from tqdm import tqdm

    settings = GenerationSettings(**run.generation)
    with tqdm(total=len(records), desc=f"pam eval {run.kind}", unit="region", file=sys.stderr,
              disable=not show_progress, dynamic_ncols=True) as bar:
        for chunk in _chunks(records, batch):
            try:
                results = pam.describe(chunk[0].image, [prompts[r.id] for r in chunk], task=run.task, lang=run.lang,
                                       generation=settings)
            except ValueError as exc:  # pam_core's input errors: name the annotation
                raise EvalError(f"annotation {chunk[0].id} ({chunk[0].image}): {exc}") from exc
            append([{"id": r.id, "prediction": res.text, "source": "pam", **res.fields, "input": input_key(r)}
                    for r, res in zip(chunk, results)])
            bar.update(len(chunk))


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
