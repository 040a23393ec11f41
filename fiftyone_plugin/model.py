"""PAM as a FiftyOne `Model`, so `dataset.apply_model(model, "pam", prompt_field="ground_truth")` works."""

from __future__ import annotations

from typing import Optional

import fiftyone.core.models as fom

from pam_core import AutoMaskSettings, GenerationSettings
from pam_core.checkpoint import DEFAULT_MODEL, DEFAULT_SAM2
from pam_core.tasks import Tasks

from .core import DEFAULT_MAX_REGIONS, DEFAULT_TASKS, ImageRequest, ModelRef, describe_sample


class PAMRegionModel(fom.SamplesMixin, fom.Model):
    """Image model returning `fo.Detections` with PAM's mask, category and texts per region.

    With `prompt_field=` (a Detections, Keypoints or Polylines field, passed to `apply_model`) those labels
    are the regions; without it every region is found automatically ("describe everything").
    """

    def __init__(self, model=DEFAULT_MODEL, sam2=DEFAULT_SAM2, tasks: Tasks = DEFAULT_TASKS,
                 lang: str = "en", max_regions: int = DEFAULT_MAX_REGIONS, max_new_tokens: int = 512,
                 auto: Optional[AutoMaskSettings] = None, device: str = "auto", dtype: Optional[str] = None,
                 local_files_only: Optional[bool] = None):
        super().__init__()
        self.request = ImageRequest.of(tasks, lang, GenerationSettings(max_new_tokens=max_new_tokens),
                                       auto or AutoMaskSettings(max_regions=max_regions))
        model_ref = ModelRef.of(model, sam2, device, dtype, local_files_only)
        self.model_name = model_ref.name
        self.pam = model_ref.load()
        self._preprocess = False

    @property
    def media_type(self):
        return "image"

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

    def predict(self, arg, sample=None):
        prompt_field = (self.needs_fields or {}).get("prompt_field")
        prompt = sample.get_field(prompt_field) if prompt_field else False
        return describe_sample(self.pam, arg, prompt, self.request, self.model_name)
