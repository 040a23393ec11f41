"""Run by test_evaluation.py in its own process against the session's mongod; prints JSON findings.

A separate process keeps this FiftyOne connection (and its config, read at import) apart from any other
FiftyOne test of the session.
"""

import copy
import json
import sys

import fiftyone as fo
from fiftyone import ViewField as F

from fiftyone_plugin import evaluate_pam


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
    findings["info"] = copy.deepcopy(reloaded.info["pam_evaluations"])  # the rerun below changes it
    findings["labels"] = {det.label: {k: det[k] for k in det.field_names if k.startswith(("rec_", "cap_"))}
                          for sample in reloaded for det in sample.pam.detections}
    findings["samples"] = {sample.tags[0]: {"rec_semantic_iou": sample["rec_semantic_iou"],
                                            "cap_cider": sample["cap_cider"]} for sample in reloaded}
    patches = reloaded.to_patches("pam").exists("pam.rec_semantic_similarity").sort_by("pam.rec_semantic_similarity")
    findings["worst_first"] = patches.values("pam.label")
    findings["schema_has_scores"] = "pam.detections.rec_semantic_similarity" in reloaded.get_field_schema(flat=True)
    findings["sorted_samples"] = [s.tags[0] for s in reloaded.sort_by(F("rec_semantic_iou"), reverse=True)]

    # Re-running with index matching replaces the earlier scores: the "tree" region is now paired too.
    evaluate_pam(dataset, "pam", "gt", kind="recognition", eval_key="rec", match="index")
    findings["rerun_tree"] = {k: v for k, v in fo.load_dataset("pam-eval-test").match_tags("s1").first()
                              .pam.detections[0].iter_fields() if k.startswith("rec_")}
    try:
        evaluate_pam(dataset, "pam", "nope")
    except ValueError as exc:
        findings["missing_field_error"] = str(exc)
    dataset.delete()
    return findings


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
