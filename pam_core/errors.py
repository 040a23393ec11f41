"""Typed errors: every failure pam_core raises on purpose is a PAMError with a message meant for users."""


class PAMError(Exception):
    """Base class of the errors pam_core raises for bad input or missing files."""


class ImageError(PAMError, ValueError):
    """The image cannot be read or has a layout pam_core does not understand."""


class PromptError(PAMError, ValueError):
    """A region prompt (box, points, mask) does not describe a region of the image."""


class TaskError(PAMError, ValueError):
    """The task is neither a known task name nor a free instruction."""


class SettingsError(PAMError, ValueError):
    """A generation setting is out of range."""


class CheckpointError(PAMError):
    """A PAM or SAM 2 checkpoint is incomplete, of the wrong kind, or does not fit its config."""


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """Weights are neither on disk nor allowed to be downloaded; the message says what to fetch."""


class DeviceError(PAMError, ValueError):
    """The requested device or dtype is not available here."""


class DependencyError(PAMError, ImportError):
    """An optional dependency is missing or too old for the feature asked for; the message names what to install."""


class VideoError(PAMError, ValueError):
    """The video cannot be read, has no frames, or a segment does not fit it."""


class DatasetError(PAMError, ValueError):
    """A dataset source (folder, glob, manifest) or output folder cannot be used; the message names the line.

    `problems`: for a source with several malformed rows, one message per row (the first ones), which a command
    line shows above its one-line error."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()):
        super().__init__(message)
        self.problems = problems
