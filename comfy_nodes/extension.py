"""The pack's ComfyUI extension: registers the model folders and lists the nodes (V3 `comfy_entrypoint`)."""

from comfy_api.latest import ComfyExtension, io

from .describe import PAMDescribeEverything, PAMDescribeMasks, PAMSegmentDescribe
from .find import PAMFindDescribe
from .loader import PAMModelLoader, register_model_folders
from .output import PAMOverlay, PAMRegionsToText
from .video import PAMVideo

NODES = [PAMModelLoader, PAMSegmentDescribe, PAMDescribeMasks, PAMDescribeEverything, PAMFindDescribe, PAMVideo,
         PAMRegionsToText, PAMOverlay]


class PAMExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> PAMExtension:
    register_model_folders()
    return PAMExtension()
