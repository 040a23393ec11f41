"""FiftyOne plugin for PAM region labels and captions, a thin adapter over pam_core.

As a plugin (this folder under FIFTYONE_PLUGINS_DIR) it registers the `describe_regions`, `search_captions` and
`semantic_search` operators and the `region_texts` modal panel. As a package it offers `apply_pam(...)` for curation
scripts, `queue_pam_shards(...)` to split a run into delegated operations for several workers,
`PAMRegionModel` for `apply_model`, `evaluate_pam`, and semantic search (`compute_pam_similarity`,
`semantic_search_view`).
"""

from .core import apply_pam
from .evaluation import evaluate_pam
from .model import PAMRegionModel
from .operators import DescribeRegions, SearchCaptions, SemanticSearch, queue_pam_shards
from .panel import RegionTexts
from .search import caption_search_view
from .similarity import RegionTextModel, compute_pam_similarity, semantic_search_view

__all__ = ["apply_pam", "caption_search_view", "compute_pam_similarity", "evaluate_pam", "PAMRegionModel",
           "queue_pam_shards", "RegionTextModel", "register", "semantic_search_view"]


def register(plugin):
    plugin.register(DescribeRegions)
    plugin.register(SearchCaptions)
    plugin.register(SemanticSearch)
    plugin.register(RegionTexts)
