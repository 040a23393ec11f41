"""pam_core: the Perceive Anything Model (PAM) as a library — masks and text for image regions."""

from .automask import AutoMaskSettings
from .engine import PAM, FeatureCache, RegionAnalysis, RegionResult
from .errors import (CheckpointError, DeviceError, ImageError, PAMError, PromptError, SettingsError,
                     TaskError, WeightsNotFoundError)
from .generation import GenerationSettings
from .prompts import Region
from .tasks import LANGUAGES, TASK_NAMES

__all__ = [
    "PAM", "GenerationSettings", "AutoMaskSettings", "FeatureCache", "RegionAnalysis", "RegionResult", "Region",
    "TASK_NAMES", "LANGUAGES",
    "PAMError", "CheckpointError", "DeviceError", "ImageError", "PromptError", "SettingsError", "TaskError", "WeightsNotFoundError",
]
