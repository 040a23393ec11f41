"""Caption search: the App's sidebar filters text attributes by exact value only, so words inside captions are
found with a `contains_str` view instead."""

from __future__ import annotations

from typing import Sequence

from fiftyone import ViewField as F

from .labels import TEXT_ATTRIBUTES

MATCH_MODES = ("all", "any", "phrase")


def caption_search_view(sample_collection, label_field: str, query: str, match: str = "all",
                        attributes: Sequence[str] = TEXT_ATTRIBUTES):
    """The regions of `label_field` whose texts contain the query, case-insensitively.

    `match`: "all" (every word somewhere in the region's texts), "any" (one of the words) or "phrase"
    (the exact phrase in one text). `attributes`: the label attributes searched (default: every text PAM writes).
    """
    words = query.split()
    if not words:
        raise ValueError("the search query is empty")
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")

    def contains(text: str):
        found = None
        for attribute in attributes:
            expr = F(attribute).contains_str(text, case_sensitive=False)
            found = expr if found is None else found | expr
        return found

    if match == "phrase":
        expr = contains(" ".join(words))
    else:
        parts = [contains(word) for word in words]
        expr = parts[0]
        for part in parts[1:]:
            expr = (expr & part) if match == "all" else (expr | part)
    return sample_collection.filter_labels(label_field, expr)
