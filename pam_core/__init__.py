"""pam_core: the Perceive Anything Model (PAM) as a library — masks and text for image and video regions."""

from .analysis import RegionAnalysis, RegionResult
from .automask import AutoMaskSettings
from .concepts import ConceptFinder, ConceptInstance
from .engine import PAM
from .errors import (
    CheckpointError,
    DatasetError,
    DependencyError,
    DeviceError,
    ImageError,
    PAMError,
    PromptError,
    SettingsError,
    TaskError,
    VideoError,
    WeightsNotFoundError,
)
from .generation import GenerationSettings
from .loading import ModelSource, load_pam
from .prompts import Region
from .segmenter import FeatureCache
from .stream import StreamItem, StreamProgress, StreamResult
from .tasks import LANGUAGES, TASK_NAMES
from .video import VideoPrompt, VideoResult, VideoSettings

__all__ = [
    "PAM", "GenerationSettings", "AutoMaskSettings", "FeatureCache", "RegionAnalysis", "RegionResult", "Region",
    "TASK_NAMES", "LANGUAGES",
    "ConceptFinder", "ConceptInstance",
    "PAMError", "CheckpointError", "DependencyError", "DeviceError", "ImageError", "PromptError", "SettingsError",
    "TaskError", "WeightsNotFoundError", "DatasetError",
    "VideoError", "VideoPrompt", "VideoResult", "VideoSettings", "ModelSource", "load_pam",
    "StreamItem", "StreamProgress", "StreamResult",
]
