"""ComfyUI entry point: this repository works when cloned into ComfyUI/custom_nodes/ (see docs/comfyui.md).

ComfyUI imports this folder as a package. pytest may import it too while collecting tests (the repository
root is a package to it, under whatever name the clone has); then ComfyUI's `folder_paths` is not importable
and the nodes are not loaded.
"""

import importlib.util
import os
import sys

WEB_DIRECTORY = "./web"

if __package__ and importlib.util.find_spec("folder_paths") is not None:
    try:
        import pam_core  # noqa: F401  (installed with `pip install -e .` or `pip install -r requirements.txt`)
    except ImportError:  # a plain clone: use the pam_core next to this file
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    from .comfy_nodes.extension import comfy_entrypoint  # noqa: E402

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
