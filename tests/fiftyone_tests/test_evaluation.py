"""`evaluate_pam` on a real FiftyOne dataset, stored in a throw-away MongoDB (FiftyOne's bundled mongod)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURE, REPO, needs_fixture, needs_java

pytestmark = [pytest.mark.host, needs_fixture, needs_java]


def test_evaluate_pam_scores_labels_samples_and_dataset(tmp_path):
    # the session's mongod (conftest), a database of its own; FiftyOne configures itself in the child process
    env = {**os.environ, "FIFTYONE_DATABASE_NAME": "pam_eval_test", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    image = FIXTURE / "inputs" / "image.png"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("evaluation_case.py")), str(image)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])

    # recognition: "dog"/"dog" is exact; "Category: red car." is cleaned to "red car" against "car";
    # the "tree" box overlaps no ground truth (IoU 0), and the traffic light is missed
    rec = found["recognition"]
    assert rec["metrics"]["regions"] == 2 and rec["unmatched_pred"] == 1 and rec["unmatched_gt"] == 1
    dog, car = found["labels"]["dog"], found["labels"]["Category: red car."]
    assert dog["rec_semantic_similarity"] == pytest.approx(1.0, abs=1e-5) and dog["rec_semantic_iou"] == 1.0
    assert car["rec_semantic_iou"] == pytest.approx(1 / 2)
    assert rec["metrics"]["semantic_iou"] == pytest.approx(3 / 4)
    assert rec["metrics"]["semantic_similarity"] == pytest.approx((1 + car["rec_semantic_similarity"]) / 2)
    assert found["samples"]["s0"]["rec_semantic_iou"] == pytest.approx(3 / 4)
    assert found["samples"]["s1"]["rec_semantic_iou"] is None

    # FiftyOne's matching, recorded as for any detection evaluation: "tp" when the paired categories agree
    gt = found["gt_labels"]
    assert (dog["rec"], car["rec"], found["labels"]["tree"]["rec"]) == ("tp", "fp", "fp")
    assert (gt["dog"]["rec"], gt["car"]["rec"], gt["traffic_light"]["rec"]) == ("tp", "fn", "fn")
    assert dog["rec_id"] == gt["dog"]["id"] and gt["dog"]["rec_id"] == dog["id"] and gt["traffic_light"]["rec_id"] == ""
    assert dog["rec_iou"] > 0.5 and found["labels"]["tree"].get("rec_iou") is None
    assert {k: found["samples"]["s1"][k] for k in ("rec_tp", "rec_fp", "rec_fn")} == \
        {"rec_tp": 0, "rec_fp": 1, "rec_fn": 1}

    # a FiftyOne evaluation run: listed, its config and results stored, its view the evaluated view
    assert found["evaluations"] == ["cap", "rec"]
    assert found["rec_config"] == {"method": "pam", "type": "detection", "kind": "recognition", "pred_field": "pam",
                                   "iou": 0.5}
    assert found["stored_summary"] == rec and found["stored_region_scores"] == 2
    assert found["cap_view"] == [["s0"]]

    # caption, on a view of s0 only: two regions, CIDEr by hand (N = 2, "the" in both references):
    # identical -> 10; the cat pair -> 10 * (3/4 + 3/5 + 1/4 + 0) / 4 = 4
    cap = found["caption"]
    assert dog["cap_cider"] == pytest.approx(10.0) and dog["cap_meteor"] == pytest.approx(1.0, abs=1e-6)
    assert car["cap_cider"] == pytest.approx(4.0) and car["cap_bleu1"] == pytest.approx(5 / 6, abs=1e-6)
    assert cap["metrics"]["cider"] == pytest.approx(7.0) and cap["metrics"]["regions"] == 2
    assert found["samples"]["s0"]["cap_cider"] == pytest.approx(7.0) and found["samples"]["s1"]["cap_cider"] is None
    assert "cap_cider" not in found["labels"]["tree"] and "rec_semantic_iou" not in found["labels"]["tree"]

    # what the App sorts on: patches worst-first, samples best-first, fields in the schema
    assert found["worst_first"] == ["Category: red car.", "dog"]
    assert found["sorted_samples"][0] == "s0" and found["schema_has_scores"]

    # delete_evaluation removes every field the caption run wrote (scores and matching) and nothing else
    deleted = found["deleted_fields"]
    assert all(field.split(".")[-1].startswith("cap") for field in deleted), deleted
    assert {"cap_cider", "pam.detections.cap_cider", "pam.detections.cap", "pam.detections.cap_id",
            "gt.detections.cap_iou", "cap_tp"} <= set(deleted)
    assert found["left_after_delete"] == ["rec"]

    # re-run with index matching: "tree" is now paired with "traffic_light" (no shared word)
    tree = found["rerun_tree"]
    assert tree["rec_semantic_iou"] == 0.0 and not math.isnan(tree["rec_semantic_similarity"])
    assert tree["rec"] == "fp" and tree["rec_iou"] == 0.0
    assert "does not exist" in found["missing_field_error"]
    assert "no region of 'pam' matches" in found["no_pairs_error"]
    assert found["final_evaluations"] == ["rec"]
    assert found["renamed"] == {"recognition_semantic_iou": True, "pam.detections.recognition_semantic_iou": True,
                                "pam.detections.recognition_id": True, "rec_semantic_iou": False,
                                "pam.detections.rec_semantic_iou": False}
