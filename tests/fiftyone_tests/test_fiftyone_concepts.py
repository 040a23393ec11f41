"""Concept prompts in the FiftyOne plugin, on a real mongod: `apply_pam(..., concepts=[...])` and the operator's
concepts field write what `pam.find` finds, and each Detection's `concept` is a filterable label attribute."""

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone import ViewField as F

from fiftyone_plugin import apply_pam
from helpers import CHECKPOINT, FIXTURE, SAM2, needs_fixture
from helpers import FIFTYONE_PLUGIN as PLUGIN
from pam_core import ConceptFinder, GenerationSettings, PromptError

pytestmark = [pytest.mark.host, needs_fixture]
TOKENS = 4
CONCEPTS = ["object", "red shape"]
IMAGE = FIXTURE / "inputs" / "image.png"


def image_dataset(name):
    dataset = fo.Dataset(name, overwrite=True)
    dataset.add_sample(fo.Sample(filepath=str(IMAGE)))
    return dataset


def test_apply_pam_with_concepts_writes_what_find_finds(pam, synthetic_sam3):
    finder = ConceptFinder.from_pretrained(synthetic_sam3)
    dataset = image_dataset("pam-concepts")
    summary = apply_pam(dataset, concepts=CONCEPTS, find_threshold=0.0, max_instances=1, sam3=finder, tasks="category",
                        model=pam, max_new_tokens=TOKENS)
    assert summary["samples"] == 1 and summary["regions"] == 2 and summary["failed"] == 0
    want = pam.find(IMAGE, CONCEPTS, task="category", threshold=0.0, max_instances=1, sam3=finder,
                    generation=GenerationSettings(max_new_tokens=TOKENS))
    detections = dataset.first().pam.detections
    assert [(d.concept, d.concept_score, d.label) for d in detections] == \
           [(r.concept, pytest.approx(r.concept_score), r.fields["label"]) for r in want]
    assert dataset.get_field_schema(flat=True)["pam.detections.concept"].__class__ is fo.StringField
    found = dataset.filter_labels("pam", F("concept") == CONCEPTS[1])  # what the App's sidebar filter does
    assert found.count("pam.detections") == 1 and found.distinct("pam.detections.concept") == [CONCEPTS[1]]
    assert dataset.info["pam_runs"]["pam"]["concepts"] == CONCEPTS
    with pytest.raises(ValueError, match="other settings"):  # resuming with other concepts is refused
        apply_pam(dataset, concepts=["dog"], sam3=finder, tasks="category", model=pam)
    with pytest.raises(PromptError, match="drop prompt_field"):
        apply_pam(dataset, label_field="pam2", prompt_field="pam", concepts=CONCEPTS, sam3=finder, model=pam)
    with pytest.raises(PromptError, match="concept 2 is empty"):
        apply_pam(dataset, label_field="pam2", concepts=["dog", " "], sam3=finder, model=pam)


def test_operator_concepts_field(synthetic_sam3):
    dataset = image_dataset("pam-concepts-operator")
    params = dict(prompt_field="__automatic__", tasks=["category"], lang="en", label_field="pam", model=str(CHECKPOINT),
                  sam2=str(SAM2), max_new_tokens=TOKENS, concepts="object, ", find_threshold=0.0, max_instances=1,
                  sam3=str(synthetic_sam3))
    result = foo.execute_operator(f"{PLUGIN}/describe_regions", ctx=dict(dataset=dataset, params=params))
    assert result.error is None, result.error
    [detection] = dataset.first().pam.detections
    assert detection.concept == "object" and 0 < detection.concept_score < 1
    form = foo.get_operator(f"{PLUGIN}/describe_regions")
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params={}))
    fields = form.resolve_input(ctx).to_json()["type"]["properties"]
    assert {"concepts", "find_threshold", "max_instances", "sam3"} <= set(fields)
