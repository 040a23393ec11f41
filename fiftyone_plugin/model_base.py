"""What the plugin's FiftyOne models (PAMRegionModel, RegionTextModel) share of FiftyOne's Model API."""

import fiftyone.core.models as fom


class UnbatchedModel(fom.Model):
    """What FiftyOne asks of a model that takes its inputs one at a time and as given (no transforms)."""

    _preprocess = False

    @property
    def ragged_batches(self):
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self):
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value):
        self._preprocess = value
