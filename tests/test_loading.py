"""The one loading path: equal sources share one loaded model, and the cache never holds more than its size."""

import pytest

from helpers import CHECKPOINT, SAM2, needs_fixture
from pam_core.errors import SettingsError
from pam_core.loading import ModelCache, ModelSource
from pam_core.model import PAMModel

pytestmark = needs_fixture


def test_the_cache_shares_equal_sources_and_makes_room_before_loading(synthetic_checkpoint, monkeypatch):
    cache = ModelCache(1)
    held_while_loading = []
    load = PAMModel.from_pretrained

    def recording_load(*args, **kwargs):  # the real loader; records how many models the cache holds meanwhile
        held_while_loading.append(len(cache))
        return load(*args, **kwargs)

    monkeypatch.setattr(PAMModel, "from_pretrained", recording_load)
    fixture = ModelSource(model=str(CHECKPOINT), sam2=str(SAM2), device="cpu", local_files_only=True)
    synthetic = ModelSource(model=str(synthetic_checkpoint[0]), sam2=str(synthetic_checkpoint[1]), device="cpu")
    first = cache.get(fixture)
    assert cache.get(ModelSource(model=CHECKPOINT, sam2=SAM2, device="cpu")) is first  # paths, no download flag
    cache.get(synthetic)
    assert held_while_loading == [0, 0] and len(cache) == 1
    assert cache.get(fixture) is not first  # evicted, loaded again


def test_a_negative_cache_size_is_refused():
    with pytest.raises(SettingsError, match=">= 0"):
        ModelCache(-1)
