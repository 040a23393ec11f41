"""FiftyOne plugin for PAM region labels and captions, thin over pam_core. Operators arrive with issue #6."""

from .evaluation import evaluate_pam  # noqa: F401
