"""FiftyOne plugin for PAM region labels and captions, a thin adapter over pam_core.

As a plugin (this folder under FIFTYONE_PLUGINS_DIR) it registers the `describe_regions` and
`search_captions` operators and the `region_texts` modal panel. As a package it offers
`apply_pam(...)` for curation scripts, `PAMRegionModel` for `apply_model`, and `evaluate_pam`.
"""

from .core import apply_pam
from .evaluation import evaluate_pam
from .model import PAMRegionModel
from .operators import DescribeRegions, SearchCaptions
from .panel import RegionTexts
from .search import caption_search_view

__all__ = ["apply_pam", "caption_search_view", "evaluate_pam", "PAMRegionModel", "register"]


def register(plugin):
    plugin.register(DescribeRegions)
    plugin.register(SearchCaptions)
    plugin.register(RegionTexts)
