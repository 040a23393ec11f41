"""ComfyUI entry point: this repository works when cloned into ComfyUI/custom_nodes/ (see README, "ComfyUI").

ComfyUI imports this folder as a package. pytest also imports this file on its own (the repository root is
a package to it) while collecting tests; then there is no package to import the nodes from, and no ComfyUI.
"""

import os
import sys

WEB_DIRECTORY = "./web"

if __package__:
    try:
        import pam_core  # noqa: F401  (installed with `pip install -e .` or `pip install -r requirements.txt`)
    except ImportError:  # a plain clone: use the pam_core next to this file
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    from .comfy_nodes.extension import comfy_entrypoint  # noqa: E402

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
