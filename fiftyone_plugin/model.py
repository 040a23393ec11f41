"""PAM as a FiftyOne `Model`, so `dataset.apply_model(model, "pam", prompt_field="ground_truth")` works, on image
datasets and (with `media_type="video"`) on video datasets."""

from __future__ import annotations

from typing import Optional, Sequence

import fiftyone.core.clips as foc
import fiftyone.core.models as fom

from pam_core import AutoMaskSettings, GenerationSettings
from pam_core.checkpoint import DEFAULT_MODEL, DEFAULT_SAM2
from pam_core.errors import SettingsError, VideoError
from pam_core.tasks import Tasks

from .core import DEFAULT_MAX_REGIONS, DEFAULT_TASKS, ImageRequest, ModelRef, describe_sample
from .model_base import UnbatchedModel
from .video import (
    automatic_prompt_labels,
    captioned_frames,
    check_prompt_frame,
    describe_video_sample,
    prompt_labels,
    video_settings,
)

MEDIA_TYPES = ("image", "video")


class PAMRegionModel(fom.SamplesMixin, UnbatchedModel):
    """PAM's regions as `fo.Detections` with mask, category and texts per region.

    With `prompt_field=` (a Detections, Keypoints or Polylines field, passed to `apply_model`) those labels
    are the regions; without it every region is found automatically ("describe everything").

    `media_type="video"`: a video model. FiftyOne hands it each video; the prompt field's objects on
    `prompt_frame` (or on the first frame that has any; a frame field, `frames.` optional), or without a prompt
    field the objects found on `prompt_frame` (default 1), are tracked through the video and captioned per
    segment (`window` / `segments` / `carry` as in `apply_pam`; one task, default "caption"). It returns
    {frame number: Detections}: FiftyOne's video models write frame labels only, so each detection carries its
    track's segment caption (`apply_pam` also writes the captions as TemporalDetections).
    """

    def __init__(self, model=DEFAULT_MODEL, sam2=DEFAULT_SAM2, tasks: Optional[Tasks] = None,
                 lang: str = "en", max_regions: int = DEFAULT_MAX_REGIONS, max_new_tokens: int = 512,
                 auto: Optional[AutoMaskSettings] = None, device: str = "auto", dtype: Optional[str] = None,
                 local_files_only: Optional[bool] = None, media_type: str = "image",
                 prompt_frame: Optional[int] = None, window: Optional[int] = None,
                 segments: Optional[Sequence[tuple[int, int]]] = None, carry: str = "box"):
        super().__init__()
        if media_type not in MEDIA_TYPES:
            raise SettingsError(f"media_type must be one of {', '.join(MEDIA_TYPES)}, got {media_type!r}")
        video_options = {"prompt_frame": prompt_frame, "window": window, "segments": segments}
        if media_type == "image" and any(value is not None for value in video_options.values()):
            given = [name for name, value in video_options.items() if value is not None]
            raise SettingsError(f"{', '.join(given)}: only for media_type='video'")
        self._media_type = media_type
        self.generation = GenerationSettings(max_new_tokens=max_new_tokens)
        self.auto = auto or AutoMaskSettings(max_regions=max_regions)
        if media_type == "video":
            self.video = video_settings(tasks, lang, window, segments, carry)
            check_prompt_frame(prompt_frame)
            self.prompt_frame = prompt_frame
        else:
            self.request = ImageRequest.of(DEFAULT_TASKS if tasks is None else tasks, lang, self.generation,
                                           self.auto)
        model_ref = ModelRef.of(model, sam2, device, dtype, local_files_only)
        self.model_name = model_ref.name
        self.pam = model_ref.load()

    @property
    def media_type(self):
        return self._media_type

    @property
    def needs_fields(self):
        return self._fields

    @needs_fields.setter
    def needs_fields(self, fields):
        """A video model's prompt field is a frame field: `gt` and `frames.gt` both name it (FiftyOne selects
        the fields a model needs by these paths before it runs)."""
        fields = dict(fields or {})
        prompt_field = fields.get("prompt_field")
        if self._media_type == "video" and prompt_field and not prompt_field.startswith("frames."):
            fields["prompt_field"] = f"frames.{prompt_field}"
        self._fields = fields

    def predict(self, arg, sample=None):
        """An image (path, array or PIL image) or, for a video model, the video reader FiftyOne passes (or a
        video path), with its sample."""
        prompt_field = (self.needs_fields or {}).get("prompt_field")
        if self._media_type == "video":
            return self._predict_video(getattr(arg, "inpath", arg), sample, prompt_field)
        prompt = sample.get_field(prompt_field) if prompt_field else False
        return describe_sample(self.pam, arg, prompt, self.request, self.model_name)

    def _predict_video(self, filepath: str, sample, prompt_field: Optional[str]):
        if isinstance(sample, foc.ClipView):
            raise VideoError("PAM's video model tracks whole videos: apply it to the video dataset or a view of its "
                             "videos, not to a clips view")
        if prompt_field:
            labels = prompt_labels(sample, prompt_field.removeprefix("frames."), self.prompt_frame)
        else:
            labels = automatic_prompt_labels(self.pam, filepath, self.prompt_frame or 1, self.auto)
        frames, captions = describe_video_sample(self.pam, filepath, labels, self.video, self.generation,
                                                 self.model_name)
        return captioned_frames(frames, captions) or None  # None: no object, nothing to write
