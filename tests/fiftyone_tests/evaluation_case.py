"""Run by test_evaluation.py in its own process against the session's mongod; prints JSON findings.

A separate process keeps this FiftyOne connection (and its config, read at import) apart from any other
FiftyOne test of the session.
"""

import json
import sys

import fiftyone as fo
from fiftyone import ViewField as F

from fiftyone_plugin import evaluate_pam
from pam_core.evaluation import EvalError


def box(x, y, w=0.2, h=0.2):
    return [x, y, w, h]


def main(image: str) -> dict:
    dataset = fo.Dataset("pam-eval-test")
    # Ground truth: category labels and a caption list per region. Predictions as the PAM plugin writes them:
    # label = category, caption attribute. One prediction overlaps nothing; one ground-truth region is missed.
    samples = [
        fo.Sample(filepath=image, tags=["s0"],
                  gt=fo.Detections(detections=[
                      fo.Detection(label="dog", bounding_box=box(0.1, 0.1), captions=["a dog runs in the park"]),
                      fo.Detection(label="car", bounding_box=box(0.6, 0.6), captions=["the cat is on the mat"])]),
                  pam=fo.Detections(detections=[
                      fo.Detection(label="dog", bounding_box=box(0.11, 0.1), caption="a dog runs in the park"),
                      fo.Detection(label="Category: red car.", bounding_box=box(0.6, 0.61),
                                   caption="the cat sat on the mat")])),
        fo.Sample(filepath=image, tags=["s1"],
                  gt=fo.Detections(detections=[
                      fo.Detection(label="traffic_light", bounding_box=box(0.3, 0.3), captions=["a lamp"])]),
                  pam=fo.Detections(detections=[
                      fo.Detection(label="tree", bounding_box=box(0.0, 0.7), caption="a tree")])),
    ]
    dataset.add_samples(samples)
    findings = {}
    findings["recognition"] = evaluate_pam(dataset, "pam", "gt", kind="recognition", eval_key="rec")
    caption_view = dataset.match_tags("s0")  # a view: only its regions are scored together
    findings["caption"] = evaluate_pam(caption_view, "pam", "gt", kind="caption", eval_key="cap", gt_attr="captions")

    reloaded = fo.load_dataset("pam-eval-test")
    findings["evaluations"] = reloaded.list_evaluations()
    info = reloaded.get_evaluation_info("rec")
    findings["rec_config"] = {"method": info.config.method, "type": info.config.type, "kind": info.config.kind,
                              "pred_field": info.config.pred_field, "iou": info.config.iou}
    stored = reloaded.load_evaluation_results("rec", cache=False)  # read back from the database
    findings["stored_summary"] = stored.summary()
    findings["stored_region_scores"] = len(stored.region_scores)
    findings["cap_view"] = reloaded.load_evaluation_view("cap").values("tags")
    findings["labels"] = {det.label: {k: det[k] for k in det.field_names if k.startswith(("id", "rec", "cap"))}
                          for sample in reloaded for det in sample.pam.detections}
    findings["gt_labels"] = {det.label: {k: det[k] for k in det.field_names if k.startswith(("id", "rec"))}
                             for sample in reloaded for det in sample.gt.detections}
    findings["samples"] = {sample.tags[0]: {"rec_semantic_iou": sample["rec_semantic_iou"],
                                            "cap_cider": sample["cap_cider"], "rec_tp": sample["rec_tp"],
                                            "rec_fp": sample["rec_fp"], "rec_fn": sample["rec_fn"]}
                           for sample in reloaded}
    patches = reloaded.to_patches("pam").exists("pam.rec_semantic_similarity").sort_by("pam.rec_semantic_similarity")
    findings["worst_first"] = patches.values("pam.label")
    findings["schema_has_scores"] = "pam.detections.rec_semantic_similarity" in reloaded.get_field_schema(flat=True)
    findings["sorted_samples"] = [s.tags[0] for s in reloaded.sort_by(F("rec_semantic_iou"), reverse=True)]

    # delete_evaluation removes everything the run wrote, and only that
    before = set(reloaded.get_field_schema(flat=True))
    reloaded.delete_evaluation("cap")
    after = set(reloaded.get_field_schema(flat=True))
    findings["deleted_fields"] = sorted(before - after)
    findings["left_after_delete"] = reloaded.list_evaluations()

    # Re-running with index matching replaces the earlier scores: the "tree" region is now paired too.
    evaluate_pam(dataset, "pam", "gt", kind="recognition", eval_key="rec", match="index")
    findings["rerun_tree"] = {k: v for k, v in fo.load_dataset("pam-eval-test").match_tags("s1").first()
                              .pam.detections[0].iter_fields() if k.startswith("rec")}
    try:
        evaluate_pam(dataset, "pam", "nope")
    except ValueError as exc:
        findings["missing_field_error"] = str(exc)
    try:  # no pair at all: a clear error, and no evaluation is left behind
        evaluate_pam(dataset.match_tags("s1"), "pam", "gt", kind="recognition", eval_key="nothing")
    except EvalError as exc:
        findings["no_pairs_error"] = str(exc)
    findings["final_evaluations"] = dataset.list_evaluations()
    dataset.rename_evaluation("rec", "recognition")  # renames every field the run wrote
    schema = dataset.get_field_schema(flat=True)
    findings["renamed"] = {field: field in schema for field in (
        "recognition_semantic_iou", "pam.detections.recognition_semantic_iou", "pam.detections.recognition_id",
        "rec_semantic_iou", "pam.detections.rec_semantic_iou")}
    dataset.delete()
    return findings


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
