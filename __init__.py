"""ComfyUI entry point: this repository works when cloned into ComfyUI/custom_nodes/ (see README, "ComfyUI")."""

import os
import sys

try:
    import pam_core  # noqa: F401  (installed with `pip install -e .` or from requirements.txt)
except ImportError:  # a plain clone: use the pam_core next to this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from .comfy_nodes import comfy_entrypoint  # noqa: E402

WEB_DIRECTORY = "./web"
__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
