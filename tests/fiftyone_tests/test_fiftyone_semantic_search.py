"""Semantic search over PAM's region texts against a real mongod and the real fiftyone-brain: handcrafted region
texts with known nearest neighbours, the index after a reload, its clean-up, and the operator and `pam search`
ranking exactly as the Python API does. The sentence model is all-MiniLM-L6-v2 from the offline package."""

import json

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.operators as foo
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fiftyone import ViewField as F
from PIL import Image

from fiftyone_plugin import apply_pam, compute_pam_similarity, semantic_search_view
from fiftyone_plugin.similarity import TEXT_MODEL, default_brain_key, text_indexes
from helpers import FIFTYONE_PLUGIN as PLUGIN
from helpers import needs_fixture
from pam_core.text_search import SearchError

pytestmark = pytest.mark.host
# (category, detailed caption) of each region, two regions per image; None: a region PAM said nothing about.
REGIONS = [
    [("pickup truck", "a red pickup truck parked by the curb"), ("cat", "a tabby cat asleep on a sofa")],
    [("pizza", "a slice of pepperoni pizza on a white plate"), ("umbrella", "a green umbrella leaning against a wall")],
    [("person", "a woman jogging along a river path"), ("bus", "a yellow school bus waiting at a stop")],
    [(None, None)],
]
# query -> the categories of the regions that must come first, in this order
NEAREST = {
    "vehicle": ["pickup truck", "bus"],
    "animal": ["cat"],
    "something to eat": ["pizza"],
    "protection from the rain": ["umbrella"],
    "someone exercising": ["person"],
}
TEXTED = sum(label is not None for regions in REGIONS for label, _ in regions)


def texts_dataset(name: str, folder, field: str = "pam") -> fo.Dataset:
    """Images whose `field` holds the REGIONS as apply_pam writes them (label = category, caption = detailed)."""
    dataset = fo.Dataset(name, overwrite=True)
    samples = []
    for number, regions in enumerate(REGIONS):
        path = folder / f"image_{number}.png"
        Image.new("RGB", (64, 48), (40 * number, 90, 160)).save(path)
        detections = [fo.Detection(label=label, caption=caption, bounding_box=[0.1 + 0.4 * i, 0.2, 0.35, 0.5],
                                   lang="en", pam_model="handcrafted") for i, (label, caption) in enumerate(regions)]
        samples.append(fo.Sample(filepath=str(path), **{field: fo.Detections(detections=detections)}))
    dataset.add_samples(samples)
    dataset.info["pam_runs"] = {field: {"prompt_field": None, "tasks": ["category", "detailed"], "lang": "en",
                                        "model": "handcrafted"}}
    dataset.save()
    dataset.add_dynamic_sample_fields()
    return dataset


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    dataset = texts_dataset("pam-semantic", tmp_path_factory.mktemp("semantic"))
    compute_pam_similarity(dataset, "pam")
    return dataset


def ranked_labels(view) -> list:
    return view.values("pam.label")


def test_queries_find_the_regions_closest_in_meaning(indexed):
    for query, expected in NEAREST.items():
        view = semantic_search_view(indexed, query, "pam", k=3)
        assert ranked_labels(view)[:len(expected)] == expected, query
        assert len(view) == 3


def test_index_is_a_text_prompt_index_over_the_patches(indexed):
    key = default_brain_key("pam")
    assert text_indexes(indexed, "pam") == [key]
    info = indexed.get_brain_info(key)
    assert info.config.patches_field == "pam" and info.config.model == TEXT_MODEL
    assert info.config.supports_prompts and info.config.method == "sklearn"
    assert info.config.model_kwargs == {"text": ["category", "detailed", "brief"], "device": "cpu"}
    index = indexed.load_brain_results(key)
    assert index.total_index_size == TEXTED  # the region without any text is left out
    texted = indexed.filter_labels("pam", F("label") != None)  # noqa: E711 (a MongoDB expression)
    assert set(index.label_ids) == set(texted.values("pam.detections.id", unwind=True))


def test_index_survives_a_reload(indexed):
    """The index and its prompt model come back from the database: the model by its zoo name."""
    indexed.reload()
    dataset = fo.load_dataset("pam-semantic")
    index = dataset.load_brain_results(default_brain_key("pam"), cache=False)
    assert index._model is None  # not the instance of the session that built it
    view = index.sort_by_similarity("vehicle", k=1)
    assert view.values("pam.detections.label") == [["pickup truck"]]  # its sample, with the matching patch only
    assert ranked_labels(semantic_search_view(dataset, "vehicle", "pam", k=1)) == ["pickup truck"]


def run_results_count(dataset) -> int:
    """Brain and other run results stored for the dataset (the sklearn index keeps its embeddings there)."""
    return sum(run.results is not None for run in dataset._doc.brain_methods.values())


def test_deleting_the_run_or_the_field_removes_the_index(tmp_path):
    dataset = texts_dataset("pam-semantic-delete", tmp_path)
    dataset.clone_sample_field("pam", "pam_copy")
    compute_pam_similarity(dataset, "pam")
    compute_pam_similarity(dataset, "pam_copy", brain_key="copy_sim")
    assert sorted(text_indexes(dataset)) == ["copy_sim", "pam_text_sim"] and run_results_count(dataset) == 2
    files = dataset._doc.brain_methods["pam_text_sim"].results.grid_id

    dataset.delete_brain_run("pam_text_sim")  # FiftyOne's own clean-up deletes the stored embeddings too
    assert text_indexes(dataset) == ["copy_sim"] and run_results_count(dataset) == 1
    assert fo.core.odm.get_db_conn()["fs.files"].count_documents({"_id": files}) == 0

    dataset.delete_sample_field("pam_copy")  # no hook in FiftyOne: the next build or search deletes the index
    with pytest.raises(SearchError, match="'pam' has no semantic search index yet"):
        semantic_search_view(dataset, "vehicle", "pam")
    assert text_indexes(dataset) == [] and dataset.list_brain_runs() == []


def test_rebuilding_replaces_the_index_and_other_runs_are_kept(tmp_path):
    dataset = texts_dataset("pam-semantic-rebuild", tmp_path)
    compute_pam_similarity(dataset, "pam", text="category")
    index = compute_pam_similarity(dataset, "pam", text=["detailed"])
    assert dataset.list_brain_runs() == ["pam_text_sim"]
    assert dataset.get_brain_info("pam_text_sim").config.model_kwargs["text"] == ["detailed"]
    assert index.total_index_size == TEXTED
    dataset.clone_sample_field("pam", "other")
    fob.compute_similarity(dataset, patches_field="other", embeddings={}, brain_key="not_pam")
    with pytest.raises(ValueError, match="brain key 'not_pam' holds another kind of brain run"):
        compute_pam_similarity(dataset, "pam", brain_key="not_pam")


def test_bad_inputs_say_what_is_wrong(indexed, tmp_path):
    with pytest.raises(ValueError, match="'filepath' is not a Detections field"):
        compute_pam_similarity(indexed, "filepath")
    with pytest.raises(SearchError, match="unknown text part"):
        compute_pam_similarity(indexed, "pam", text="caption")
    with pytest.raises(SearchError, match="no region of 'pam' has any of the texts definition"):
        compute_pam_similarity(indexed, "pam", text="definition", brain_key="nothing")
    assert "nothing" not in indexed.list_brain_runs()
    with pytest.raises(SearchError, match="query is empty"):
        semantic_search_view(indexed, "  ", "pam")
    from pam_core.text_search import EmbedderError

    with pytest.raises(EmbedderError, match="cannot load the sentence embedder .*not in the Hugging Face cache"):
        compute_pam_similarity(indexed, "pam", model="sentence-transformers/no-such-model", brain_key="missing")
    assert "missing" not in indexed.list_brain_runs()


def test_operator_and_pam_search_rank_like_the_python_api(tmp_path, pam_cli):
    dataset = texts_dataset("pam-semantic-operator", tmp_path)
    uri = f"{PLUGIN}/semantic_search"
    # the describe-dataset layout (one Parquet row per region) of the same regions, and a failed image
    rows = [dict(id=f"{n}-{i}", image=f"image_{n}.png", region=i, prompt="box", box=[0.0, 0.0, 1.0, 1.0],
                 mask_rle=None, mask_score=0.9, object_score=1.0, lang="en", model="handcrafted",
                 text_category=label, text_detailed=caption, label=label, definition=None, error=None)
            for n, regions in enumerate(REGIONS) for i, (label, caption) in enumerate(regions)]
    rows.append(dict(rows[0], id="broken", image="broken.png", region=None, text_category=None, text_detailed=None,
                     label=None, error="cannot read image broken.png"))
    out = tmp_path / "described"
    out.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), out / "part-00000.parquet")
    (out / "_SUCCESS").touch()
    by_id = dict(zip(*dataset.values(["pam.detections.id", "pam.detections.label"], unwind=True)))

    for number, query in enumerate(NEAREST):
        result = foo.execute_operator(uri, ctx=dict(dataset=dataset,
                                                    params=dict(label_field="pam", query=query, k=TEXTED)))
        assert result.error is None, result.error
        assert result.result["built"] == (number == 0)  # the first search builds the index
        api = ranked_labels(semantic_search_view(dataset, query, "pam", k=None))
        assert [by_id[i] for i in result.result["region_ids"]] == api
        cli = pam_cli("search", out, query, "--top", TEXTED, "--json")
        assert cli.returncode == 0, cli.stderr
        hits = json.loads(cli.stdout)
        assert [REGIONS[int(h["image"][6:-4])][h["index"]][0] for h in hits] == api, query
        assert hits[0]["text"] == ". ".join(REGIONS[int(hits[0]["image"][6:-4])][hits[0]["index"]])
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))


def test_operator_form_lists_pam_fields_and_says_when_it_builds(tmp_path):
    from fiftyone.operators.executor import ExecutionContext

    operator = foo.get_operator(f"{PLUGIN}/semantic_search")
    dataset = texts_dataset("pam-semantic-form", tmp_path)
    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params={}))
    form = operator.resolve_input(ctx).to_json()["type"]["properties"]
    assert form["label_field"]["type"]["values"] == ["pam"] and {"query", "k", "build"} <= set(form)
    empty = fo.Dataset("pam-semantic-none", overwrite=True)
    ctx = ExecutionContext(request_params=dict(dataset_name=empty.name, params={}))
    assert set(operator.resolve_input(ctx).to_json()["type"]["properties"]) == {"none"}


@needs_fixture
def test_apply_pam_embeds_at_labelling_time(pam, tmp_path):
    dataset = texts_dataset("pam-semantic-apply", tmp_path, field="ground_truth")
    summary = apply_pam(dataset.limit(1), "pam", prompt_field="ground_truth", tasks=("category", "brief"), model=pam,
                        max_new_tokens=4, embed={"text": ["category", "brief"]})
    assert summary["brain_key"] == "pam_text_sim" and text_indexes(dataset, "pam") == ["pam_text_sim"]
    index = dataset.load_brain_results("pam_text_sim")
    assert index.total_index_size == summary["regions"] == 2
    assert len(semantic_search_view(dataset, "vehicle", "pam", k=5)) == 2
