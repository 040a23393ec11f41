"""`evaluate_pam`: PAM's region texts scored against ground truth, as a FiftyOne evaluation run.

The run is a detection evaluation: FiftyOne's COCO matching pairs each predicted region with at most one
ground-truth region by box IoU, across categories (or `match="index"` pairs them by position). The matched
pairs are then scored with `pam_core.evaluation`'s metrics, the numbers `pam eval` reports. Being a FiftyOne
evaluation, `list_evaluations`, `get_evaluation_info`, `load_evaluation_view`, `load_evaluation_results`,
`rename_evaluation` and `delete_evaluation` know it. For eval key K the run writes:

* the matching's fields: on both fields' regions `K` ("tp" when the paired categories agree, "fp"/"fn"
  otherwise), `K_id` (the paired region) and `K_iou`; on each sample `K_tp`, `K_fp` and `K_fn`;
* the scores: `K_<metric>` on each scored prediction, and on each sample the mean over its scored regions.

Sort regions worst-first with `dataset.to_patches(pred_field).sort_by(f"{pred_field}.K_meteor")`.
"""

from __future__ import annotations

import itertools
from typing import Optional

import fiftyone as fo
import numpy as np
from fiftyone.utils.eval.coco import COCOEvaluation, COCOEvaluationConfig
from fiftyone.utils.eval.detection import DetectionResults
from fiftyone.utils.iou import compute_ious

from pam_core.evaluation import CAPTION_METRICS, RECOGNITION_METRICS, EvalError, SentenceEmbedder
from pam_core.evaluation.metrics import caption_scores, recognition_scores, require_java

from .core import dataset_of

DEFAULT_PRED_ATTR = {"recognition": "label", "caption": "caption"}
MATCH_MODES = ("iou", "index")


class PAMEvaluationConfig(COCOEvaluationConfig):
    """A PAM evaluation: COCO matching across categories, then the texts of `pred_attr` scored against the
    references in `gt_attr` (`kind`: "recognition" or "caption")."""

    def __init__(self, pred_field, gt_field, kind: str = "recognition", pred_attr: Optional[str] = None,
                 gt_attr: str = "label", match: str = "iou", iou: float = 0.5, classwise: bool = False,
                 embedder: Optional[SentenceEmbedder] = None, **kwargs):
        if kind not in DEFAULT_PRED_ATTR:
            raise ValueError(f"unknown kind {kind!r}; use 'recognition' or 'caption'")
        if match not in MATCH_MODES:
            raise ValueError(f"unknown match {match!r}; use 'iou' or 'index'")
        super().__init__(pred_field, gt_field, iou=iou, classwise=classwise, **kwargs)
        self.kind = kind
        self.pred_attr = pred_attr or DEFAULT_PRED_ATTR[kind]
        self.gt_attr = gt_attr
        self.match = match
        self._embedder = embedder  # private: used while the run scores, not stored with it

    @property
    def embedder(self) -> Optional[SentenceEmbedder]:
        return self._embedder

    @property
    def method(self):
        return "pam"

    @property
    def metrics(self) -> tuple[str, ...]:
        return RECOGNITION_METRICS if self.kind == "recognition" else CAPTION_METRICS


class PAMEvaluation(COCOEvaluation):
    """Pairs regions per sample (`evaluate`), then scores every pair's texts together (`generate_results`)."""

    def __init__(self, config: PAMEvaluationConfig):
        super().__init__(config)
        self._pairs: list[tuple] = []  # (sample id, pred id, predicted text, reference texts) of matched regions

    def register_samples(self, samples, eval_key, dynamic=True):
        super().register_samples(samples, eval_key, dynamic=dynamic)
        if eval_key is not None:
            dataset = dataset_of(samples)
            for field in self._score_fields(eval_key):
                dataset.add_sample_field(field, fo.FloatField)

    def evaluate(self, sample_or_frame, eval_key=None):
        gts, preds = sample_or_frame[self.gt_field], sample_or_frame[self.pred_field]
        if self.config.match == "iou":
            matches = super().evaluate(sample_or_frame, eval_key=eval_key)
        else:
            matches = _match_by_position(gts, preds, eval_key or "eval")
        regions = {region.id: region for label in (gts, preds) if label is not None for region in label.detections}
        for _, _, _, _, gt_id, pred_id in matches:
            if gt_id is not None and pred_id is not None:
                text = regions[pred_id].get_attribute_value(self.config.pred_attr, None)
                references = _texts(regions[gt_id].get_attribute_value(self.config.gt_attr, None))
                self._pairs.append((sample_or_frame.id, pred_id, text if isinstance(text, str) else "", references))
        return matches

    def generate_results(self, samples, matches, eval_key=None, classes=None, missing=None, progress=None):
        scored = [pair for pair in self._pairs if pair[3]]
        text_metrics, region_scores = self._score(scored)
        results = PAMEvaluationResults(samples, self.config, eval_key, matches, text_metrics=text_metrics,
                                       region_scores=region_scores, gt_without_text=len(self._pairs) - len(scored),
                                       classes=classes, missing=missing, backend=self)
        if eval_key is not None and scored:
            self._write_scores(samples, eval_key, scored, region_scores)
        return results

    def _score(self, pairs: list[tuple]) -> tuple[dict, dict[str, dict[str, float]]]:
        """The aggregate and each prediction's scores, as `pam eval` computes them."""
        if not pairs:
            return {"regions": 0}, {}
        if self.config.kind == "recognition":
            embedder = self.config.embedder or SentenceEmbedder()
            rows = recognition_scores([p[2] for p in pairs], [p[3][0] for p in pairs], embedder)
            aggregate = {name: float(np.mean([row[name] for row in rows])) for name in self.config.metrics}
            aggregate["embedder"] = embedder.source
            per_region = {p[1]: row for p, row in zip(pairs, rows)}
        else:
            aggregate, per_region = caption_scores({p[1]: p[3] for p in pairs}, {p[1]: p[2] for p in pairs})
        aggregate["regions"] = len(pairs)
        return aggregate, {pred_id: {name: float(row[name]) for name in self.config.metrics}
                           for pred_id, row in per_region.items()}

    def _write_scores(self, samples, eval_key: str, pairs: list[tuple], region_scores: dict) -> None:
        """Each score onto its prediction, and each sample's mean over its scored regions onto the sample."""
        by_sample: dict[str, list[str]] = {}
        for sample_id, pred_id, _, _ in pairs:
            by_sample.setdefault(sample_id, []).append(pred_id)
        for metric in self.config.metrics:
            field = f"{eval_key}_{metric}"
            samples.set_label_values(f"{self.config.pred_field}.detections.{field}", [
                {"sample_id": sample_id, "label_id": pred_id, "value": region_scores[pred_id][metric]}
                for sample_id, pred_id, _, _ in pairs])
            samples.set_values(field, {sample_id: float(np.mean([region_scores[i][metric] for i in pred_ids]))
                                       for sample_id, pred_ids in by_sample.items()}, key_field="id")

    def _score_fields(self, eval_key: str) -> list[str]:
        fields = [f"{eval_key}_{metric}" for metric in self.config.metrics]
        return fields + [f"{self.config.pred_field}.detections.{field}" for field in fields]

    def get_fields(self, samples, eval_key, include_custom_metrics=True):
        return super().get_fields(samples, eval_key, include_custom_metrics) + self._score_fields(eval_key)

    def cleanup(self, samples, eval_key):
        dataset_of(samples).delete_sample_fields(self._score_fields(eval_key), error_level=1)
        super().cleanup(samples, eval_key)  # last: it also removes the App's sidebar group once it is empty


class PAMEvaluationResults(DetectionResults):
    """The matching (as for any detection evaluation: `print_report()` compares the paired categories) plus
    `text_metrics` (the aggregate scores), `region_scores` ({prediction id: scores}) and `gt_without_text`
    (matched ground-truth regions without a reference, not scored)."""

    def __init__(self, samples, config, eval_key, matches, text_metrics=None, region_scores=None,
                 gt_without_text=0, **kwargs):
        super().__init__(samples, config, eval_key, matches, **kwargs)
        self.text_metrics = dict(text_metrics or {})
        self.region_scores = dict(region_scores or {})
        self.gt_without_text = int(gt_without_text)

    def summary(self) -> dict:
        """What `evaluate_pam` returns: the settings, the aggregate and the unmatched counts."""
        config = self.config
        return {"kind": config.kind, "pred_field": config.pred_field, "gt_field": config.gt_field,
                "pred_attr": config.pred_attr, "gt_attr": config.gt_attr, "match": config.match,
                "iou_thresh": config.iou, "metrics": dict(self.text_metrics),
                "unmatched_gt": sum(pred_id is None for pred_id in self.ypred_ids),
                "unmatched_pred": sum(gt_id is None for gt_id in self.ytrue_ids),
                "gt_without_text": self.gt_without_text}

    @classmethod
    def _from_dict(cls, d, samples, config, eval_key, **kwargs):
        return super()._from_dict(d, samples, config, eval_key, text_metrics=d.get("text_metrics"),
                                  region_scores=d.get("region_scores"), gt_without_text=d.get("gt_without_text", 0),
                                  **kwargs)


def _match_by_position(gts, preds, eval_key: str) -> list[tuple]:
    """The i-th prediction paired with the i-th ground-truth region, recorded on the regions and returned as
    FiftyOne's COCO matching does."""
    matches = []
    for gt, pred in itertools.zip_longest(gts.detections if gts else [], preds.detections if preds else []):
        iou = float(compute_ious([pred], [gt])[0, 0]) if gt is not None and pred is not None else None
        for region, other, unmatched in ((gt, pred, "fn"), (pred, gt, "fp")):
            if region is not None:
                region[eval_key] = "tp" if other is not None and other.label == region.label else unmatched
                region[f"{eval_key}_id"] = other.id if other is not None else ""
                region[f"{eval_key}_iou"] = iou
        matches.append((gt.label if gt else None, pred.label if pred else None, iou,
                        pred.confidence if pred else None, gt.id if gt else None, pred.id if pred else None))
    return matches


def _texts(value) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def _check_detections_field(samples, field: str) -> None:
    if field.startswith("frames."):
        raise ValueError(f"{field!r}: evaluate_pam works on sample-level Detections fields, not frame fields")
    schema = samples.get_field_schema()
    if field not in schema:
        raise ValueError(f"field {field!r} does not exist on {samples.name}")
    kind = getattr(schema[field], "document_type", None)
    if kind is not fo.Detections:
        raise ValueError(f"field {field!r} holds {getattr(kind, '__name__', kind)}, not fo.Detections")


def evaluate_pam(samples, pred_field: str, gt_field: str, kind: str = "recognition", eval_key: str = "pam_eval",
                 pred_attr: Optional[str] = None, gt_attr: str = "label", match: str = "iou",
                 iou_thresh: float = 0.5, embedder: Optional[SentenceEmbedder] = None) -> dict:
    """Score `pred_field` against `gt_field` on `samples` (a dataset or view) as the evaluation `eval_key`;
    returns the summary (settings, aggregate `metrics`, unmatched counts). A run with the same key is replaced.

    kind: "recognition" (semantic similarity / IoU against the ground-truth category) or "caption"
    (BLEU, METEOR, ROUGE-L, CIDEr against the ground-truth text(s); needs Java).
    pred_attr: the Detection attribute holding PAM's text (default: "label" / "caption").
    gt_attr: the ground-truth attribute with the reference: a string or a list of strings.
    match: "iou" (COCO matching by box IoU >= iou_thresh, across categories) or "index" (by position).
    Load the full results with `samples.load_evaluation_results(eval_key)`.
    """
    _check_detections_field(samples, pred_field)
    _check_detections_field(samples, gt_field)
    if kind == "recognition":  # what the scores need, before the run exists
        embedder = embedder or SentenceEmbedder()
    elif kind == "caption":
        require_java()
    results = samples.evaluate_detections(pred_field, gt_field, eval_key=eval_key, method=PAMEvaluationConfig,
                                          iou=iou_thresh, classwise=False, kind=kind, pred_attr=pred_attr,
                                          gt_attr=gt_attr, match=match, embedder=embedder)
    if not results.text_metrics["regions"]:
        samples.delete_evaluation(eval_key)
        raise EvalError(f"no region of {pred_field!r} matches one of {gt_field!r} with a reference text")
    return results.summary()
