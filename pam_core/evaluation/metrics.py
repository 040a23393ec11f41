"""Region-understanding metrics: Osprey's recognition pair and the COCO caption scores.

Recognition (LVIS / PACO, Osprey protocol): the prediction keeps only the text after a first ":" and
loses ".", ":" and ","; the category loses "_" and ":". Semantic similarity is the cosine of their
all-MiniLM-L6-v2 sentence embeddings, semantic IoU the Jaccard index of their lower-cased word sets.

Captions (RefCOCOg, Visual Genome, streaming events): pycocoevalcap's PTB tokenizer, then BLEU-1..4,
METEOR 1.5, ROUGE-L and CIDEr-D, exactly the scorers `COCOEvalCap.evaluate` calls (SPICE is left out: it
downloads Stanford CoreNLP at run time). The tokenizer and METEOR run Java. Chinese captions (`lang="zh"`)
are split into characters here instead (`chinese_tokens`), since the PTB tokenizer keeps an unspaced run
of ideographs as one token.

Every text is whitespace-normalised first (`normalize_whitespace`), see docs/evaluation.md.
"""

from __future__ import annotations

import re
import shutil
import unicodedata
from typing import Mapping, Sequence

import numpy as np

from ..errors import PAMError
from ..text_search import SentenceEmbedder

DEFAULT_TASKS = {"recognition": "category", "caption": "brief"}  # protocol -> the PAM task it scores
CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")
RECOGNITION_METRICS = ("semantic_similarity", "semantic_iou")


class EvalError(PAMError):
    """An evaluation input, dependency or output is unusable; the message says which and why."""


def normalize_whitespace(text: str) -> str:
    """Every run of Unicode whitespace as one space. The Java PTB tokenizer reads one caption per line and
    treats \\r, \\v, \\f, U+2028 and U+2029 as line ends, so one of them inside a caption would pair every
    later region with another region's text."""
    return " ".join(text.split())


# Scripts written without spaces between words, each letter a token: hangul jamo, kana, CJK ideographs
# (unified, extensions A-G, compatibility), hangul syllables. Punctuation in these blocks is not \w.
_CJK = ("\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
        "\uf900-\ufaff\U00020000-\U0003134f")
_CHINESE_TOKEN = re.compile(f"(?=\\w)[{_CJK}]|[^\\W{_CJK}]+")


def chinese_tokens(text: str) -> list[str]:
    """Tokens of a Chinese (or mixed) caption: one per CJK character, other letters and digits as lower-cased
    words; punctuation and symbols (CJK and fullwidth ones too) are dropped, as the PTB tokenizer's output
    loses punctuation. NFKC folds fullwidth latin letters and digits and halfwidth kana first."""
    return _CHINESE_TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def clean_prediction(text: str) -> str:
    """Osprey's post-processing of a recognition answer."""
    if ":" in text:
        text = text.split(":")[1]
    for mark in ".:,":
        text = text.replace(mark, " ")
    return text.strip()


def clean_category(name: str) -> str:
    """Osprey's form of a category name ("bus_(vehicle)" -> "bus (vehicle)", "car:wheel" -> "car wheel")."""
    return name.replace("_", " ").replace(":", " ").strip()


def semantic_iou(prediction: str, category: str) -> float:
    """Jaccard index of the lower-cased whitespace-separated word sets (both texts already cleaned)."""
    predicted, expected = set(prediction.lower().split()), set(category.lower().split())
    union = predicted | expected
    return len(predicted & expected) / len(union) if union else 0.0


def recognition_scores(predictions: Sequence[str], categories: Sequence[str],
                       embedder: SentenceEmbedder) -> list[dict[str, float]]:
    """Per-region semantic similarity and semantic IoU, prediction i against category i."""
    cleaned = [clean_prediction(normalize_whitespace(p)) for p in predictions]
    names = [clean_category(normalize_whitespace(c)) for c in categories]
    sims = embedder.similarities(cleaned, names)
    return [{"semantic_similarity": float(s), "semantic_iou": semantic_iou(p, c)}
            for s, p, c in zip(sims, cleaned, names)]


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise EvalError("caption metrics need Java (pycocoevalcap's PTB tokenizer and METEOR run it): install a "
                        "JRE, e.g. `apt-get install default-jre-headless`")
    return java


def tokenize_captions(captions: Mapping[int, Sequence[str]], lang: str = "en") -> dict[int, list[str]]:
    """Whitespace-normalised captions as space-separated tokens: the PTB tokenizer (lower case, punctuation
    dropped) for English, `chinese_tokens` for Chinese."""
    captions = {key: [normalize_whitespace(text) for text in texts] for key, texts in captions.items()}
    if lang == "zh":
        return {key: [" ".join(chinese_tokens(text)) for text in texts] for key, texts in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({key: [{"caption": text} for text in texts] for key, texts in captions.items()})


def caption_scores(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str], lang: str = "en"
                   ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Corpus scores (as `COCOEvalCap` reports them) and per-region scores, keyed like the inputs.

    CIDEr's document frequencies come from the references of exactly this set, so its value depends on
    which regions are scored together (as in the protocol).
    """
    if lang not in ("en", "zh"):
        raise EvalError(f"caption metrics know English (en) and Chinese (zh), not {lang!r}")
    if set(references) != set(predictions):
        raise EvalError("caption scoring needs one prediction for every region with references")
    if not references:
        raise EvalError("no regions to score")
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise EvalError(f"regions without reference captions: {empty[:5]}")
    require_java()
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as exc:
        raise EvalError("caption metrics need pycocoevalcap: pip install 'pam-suite[eval]'") from exc

    keys = list(references)
    index = {key: i for i, key in enumerate(keys)}  # pycocoevalcap wants sortable, tokenizer-safe ids
    gts = tokenize_captions({index[k]: references[k] for k in keys}, lang)
    res = tokenize_captions({index[k]: [predictions[k]] for k in keys}, lang)
    corpus: dict[str, float] = {}
    per_region: dict[str, dict[str, float]] = {k: {} for k in keys}

    def record(name, total, each):
        corpus[name] = float(total)
        for position, value in zip(gts, each):  # every scorer walks gts in this order
            per_region[keys[position]][name] = float(value)

    bleu_total, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        record(f"bleu{n + 1}", bleu_total[n], bleu_each[n])
    meteor = Meteor()  # starts METEOR's Java process; deleting the scorer stops it
    try:
        record("meteor", *meteor.compute_score(gts, res))
    finally:
        del meteor
    record("rouge_l", *Rouge().compute_score(gts, res))
    record("cider", *Cider().compute_score(gts, res))
    return corpus, per_region


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


__all__ = ["CAPTION_METRICS", "DEFAULT_TASKS", "RECOGNITION_METRICS", "EvalError", "SentenceEmbedder",
           "caption_scores", "chinese_tokens", "clean_category", "clean_prediction", "normalize_whitespace",
           "recognition_scores", "semantic_iou", "mean", "require_java", "tokenize_captions"]
