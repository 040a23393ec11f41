"""Region-understanding evaluation: annotation files, converters, metrics and the `pam eval` runner."""

from .annotations import CONVERTERS, Annotation, load_annotations, write_annotations
from .metrics import (
    CAPTION_METRICS,
    RECOGNITION_METRICS,
    EvalError,
    SentenceEmbedder,
    caption_scores,
    chinese_tokens,
    clean_category,
    clean_prediction,
    normalize_whitespace,
    recognition_scores,
    semantic_iou,
)

__all__ = [
    "Annotation", "CONVERTERS", "load_annotations", "write_annotations", "CAPTION_METRICS", "RECOGNITION_METRICS",
    "EvalError", "SentenceEmbedder", "caption_scores", "chinese_tokens", "clean_category", "clean_prediction",
    "normalize_whitespace", "recognition_scores", "semantic_iou",
]
