"""`evaluate_pam`: score PAM's region labels or captions on a FiftyOne dataset against ground truth.

Thin over `pam_core.evaluation`: predicted and ground-truth `fo.Detections` are paired per sample, the
pairs are scored together with the same metrics as `pam eval`, and the results are written back where
the App can sort on them:

* each matched predicted Detection gets `<eval_key>_<metric>` attributes and `<eval_key>_gt_id`;
* each sample gets `<eval_key>_<metric>` = the mean over its matched regions (sort samples by it);
* the dataset's `info["pam_evaluations"][eval_key]` holds the aggregate metrics and the settings.

Sort regions worst-first with `dataset.to_patches(pred_field).sort_by(F(f"{pred_field}.{eval_key}_meteor"))`.
"""

from __future__ import annotations

from typing import Optional

import fiftyone as fo
import numpy as np

from pam_core.evaluation import CAPTION_METRICS, RECOGNITION_METRICS, EvalError, SentenceEmbedder
from pam_core.evaluation.metrics import caption_scores, recognition_scores

DEFAULT_PRED_ATTR = {"recognition": "label", "caption": "caption"}


def box_iou(a, b) -> float:
    """IoU of two FiftyOne boxes (relative [x, y, w, h])."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    w = min(ax0 + aw, bx0 + bw) - max(ax0, bx0)
    h = min(ay0 + ah, by0 + bh) - max(ay0, by0)
    inter = max(w, 0.0) * max(h, 0.0)
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def match_regions(preds: list, gts: list, match: str = "iou", iou_thresh: float = 0.5) -> list[tuple]:
    """(pred, gt) pairs: "index" pairs the i-th of each; "iou" pairs greedily by box IoU >= iou_thresh."""
    if match == "index":
        return list(zip(preds, gts))
    if match != "iou":
        raise ValueError(f"unknown match {match!r}; use 'iou' or 'index'")
    candidates = sorted(((box_iou(p.bounding_box, g.bounding_box), i, j) for i, p in enumerate(preds)
                         for j, g in enumerate(gts)), key=lambda c: -c[0])
    used_p, used_g, pairs = set(), set(), []
    for iou, i, j in candidates:
        if iou < iou_thresh:
            break
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            pairs.append((preds[i], gts[j]))
    return pairs


def _texts(value) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def _detections_field(samples, field: str) -> None:
    schema = samples.get_field_schema(flat=False)
    if field.startswith("frames."):
        raise ValueError(f"{field!r}: evaluate_pam works on sample-level Detections fields, not frame fields")
    if field not in schema:
        raise ValueError(f"field {field!r} does not exist on {samples.name}")
    kind = getattr(schema[field], "document_type", None)
    if kind is not fo.Detections:
        raise ValueError(f"field {field!r} holds {getattr(kind, '__name__', kind)}, not fo.Detections")


def evaluate_pam(samples, pred_field: str, gt_field: str, kind: str = "recognition", eval_key: str = "pam_eval",
                 pred_attr: Optional[str] = None, gt_attr: str = "label", match: str = "iou",
                 iou_thresh: float = 0.5, embedder: Optional[SentenceEmbedder] = None) -> dict:
    """Score `pred_field` against `gt_field` on `samples` (a dataset or view); returns the aggregate.

    kind: "recognition" (semantic similarity / IoU against the ground-truth category) or "caption"
    (BLEU, METEOR, ROUGE-L, CIDEr against the ground-truth text(s); needs Java).
    pred_attr: the Detection attribute holding PAM's text (default: "label" / "caption").
    gt_attr: the ground-truth attribute with the reference: a string or a list of strings.
    """
    if kind not in DEFAULT_PRED_ATTR:
        raise ValueError(f"unknown kind {kind!r}; use 'recognition' or 'caption'")
    if not eval_key.isidentifier():
        raise ValueError(f"eval_key {eval_key!r} must be a valid field name")
    pred_attr = pred_attr or DEFAULT_PRED_ATTR[kind]
    _detections_field(samples, pred_field)
    _detections_field(samples, gt_field)

    pairs, counts = [], {"unmatched_gt": 0, "unmatched_pred": 0, "gt_without_text": 0}
    for sample in samples.select_fields([pred_field, gt_field]):
        preds = list(sample[pred_field].detections) if sample[pred_field] else []
        gts = list(sample[gt_field].detections) if sample[gt_field] else []
        matched = match_regions(preds, gts, match, iou_thresh)
        counts["unmatched_pred"] += len(preds) - len(matched)
        counts["unmatched_gt"] += len(gts) - len(matched)
        for pred, gt in matched:
            refs = _texts(gt[gt_attr] if gt_attr in gt else None)
            if not refs:
                counts["gt_without_text"] += 1
                continue
            text = pred[pred_attr] if pred_attr in pred else None
            pairs.append((sample.id, pred.id, gt.id, text if isinstance(text, str) else "", refs))
    if not pairs:
        raise EvalError(f"no region of {pred_field!r} matches one of {gt_field!r} with a reference text")

    if kind == "recognition":
        embedder = embedder or SentenceEmbedder()
        rows = recognition_scores([p[3] for p in pairs], [p[4][0] for p in pairs], embedder)
        names = RECOGNITION_METRICS
        aggregate = {n: float(np.mean([r[n] for r in rows])) for n in names}
        aggregate["embedder"] = embedder.source
    else:
        aggregate, per_region = caption_scores({p[1]: p[4] for p in pairs}, {p[1]: p[3] for p in pairs})
        rows = [per_region[p[1]] for p in pairs]
        names = CAPTION_METRICS
    aggregate["regions"] = len(pairs)

    _write_scores(samples, pred_field, eval_key, names, pairs, rows)
    summary = {"kind": kind, "pred_field": pred_field, "gt_field": gt_field, "pred_attr": pred_attr,
               "gt_attr": gt_attr, "match": match, "iou_thresh": iou_thresh, "metrics": aggregate, **counts}
    dataset = samples._dataset
    dataset.info.setdefault("pam_evaluations", {})[eval_key] = summary
    dataset.save()
    return summary


def _write_scores(samples, pred_field, eval_key, names, pairs, rows) -> None:
    """Scores onto the matched predictions and per-sample means; values of an earlier run are replaced."""
    by_label = {p[1]: (p[2], row) for p, row in zip(pairs, rows)}
    by_sample: dict[str, list[dict]] = {}
    for p, row in zip(pairs, rows):
        by_sample.setdefault(p[0], []).append(row)
    keys = [f"{eval_key}_gt_id"] + [f"{eval_key}_{name}" for name in names]
    for sample in samples.iter_samples(autosave=True):
        for det in sample[pred_field].detections if sample[pred_field] else []:
            gt_id, row = by_label.get(det.id, (None, {}))
            for key, value in zip(keys, [gt_id] + [row.get(name) for name in names]):
                if value is not None:
                    det[key] = value
                elif key in det:
                    del det[key]
        regions = by_sample.get(sample.id, [])
        for name in names:
            sample[f"{eval_key}_{name}"] = float(np.mean([row[name] for row in regions])) if regions else None
    samples._dataset.add_dynamic_sample_fields()
