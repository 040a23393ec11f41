"""PAM Model Loader: checkpoints from ComfyUI's models/pam and models/sam2 folders (extra_model_paths.yaml
honoured) or the Hub (downloads only when asked), loaded through pam_core's one loading path on the device and
dtype ComfyUI's model management picks."""

from __future__ import annotations

import os
from pathlib import Path

import comfy.model_management as mm
import folder_paths
import torch
from comfy_api.latest import io

from pam_core import ModelSource, WeightsNotFoundError, load_pam
from pam_core.checkpoint import DEFAULT_MODEL, DEFAULT_SAM2, PAM_MODELS, SAM2_HUB_FILES
from pam_core.model import DTYPES

from .types import PAMHandle, PAMModelType

PAM_FOLDER, SAM2_FOLDER, SAM3_FOLDER = "pam", "sam2", "sam3"
SAM2_SUFFIXES = (".pt", ".safetensors")


def register_model_folders() -> None:
    """models/pam, models/sam2 and models/sam3 as ComfyUI model folders; entries from extra_model_paths.yaml stay
    first."""
    for name in (PAM_FOLDER, SAM2_FOLDER, SAM3_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))


def local_checkpoints(kind: str = PAM_FOLDER) -> dict[str, Path]:
    """Checkpoint folders (a config.json beside tokenizer.json) under every models/pam (or models/sam3) folder,
    by relative name, e.g. "PAM-1.5B/PAM-1.5B" for `hf download ... --local-dir models/pam/PAM-1.5B`."""
    found: dict[str, Path] = {}
    for base in map(Path, folder_paths.get_folder_paths(kind)):
        for folder, subfolders, files in os.walk(base, followlinks=True):  # users often symlink model folders
            relative = Path(folder).relative_to(base)
            subfolders[:] = sorted(s for s in subfolders if not s.startswith(".")) if len(relative.parts) < 4 else []
            if "config.json" in files and "tokenizer.json" in files:
                found.setdefault(relative.as_posix() if relative.parts else base.name, Path(folder))
    return found


def local_sam2_files() -> list[str]:
    return [name for name in folder_paths.get_filename_list(SAM2_FOLDER) if name.endswith(SAM2_SUFFIXES)]


def missing_weights_help() -> str:
    pam_dirs = ", ".join(folder_paths.get_folder_paths(PAM_FOLDER))
    sam2_dirs = ", ".join(folder_paths.get_folder_paths(SAM2_FOLDER))
    return (f"Put a PAM checkpoint folder (config.json, tokenizer.json, model*.safetensors; e.g. the "
            f"{DEFAULT_MODEL.split('/')[-1]} folder of the Hub repo {DEFAULT_MODEL}) into one of: {pam_dirs}, and "
            f"SAM 2.1 weights ({SAM2_HUB_FILES[DEFAULT_SAM2][0]} from {DEFAULT_SAM2}) into one of: {sam2_dirs}; then "
            f"press R to refresh the lists. Or switch on download_from_hub (needs Hub access and HF_HUB_OFFLINE "
            f"unset).")


def comfy_dtype(choice: str, device: torch.device) -> str:
    """The dtype choice, with "auto" decided by ComfyUI's model management for the device."""
    if choice != "auto":
        return choice
    if device.type == "cpu":
        return "float32"
    if mm.should_use_bf16(device):
        return "bfloat16"
    return "float16" if mm.should_use_fp16(device) else "float32"


class PAMModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PAMModelLoader", display_name="PAM Model Loader", category="PAM",
            description="Loads a Perceive Anything Model (PAM) checkpoint and the SAM 2.1 weights it runs on. "
                        "Local folders in models/pam and files in models/sam2 are listed; Hub ids load from the "
                        "Hugging Face cache, or download when download_from_hub is on.",
            inputs=[
                io.Combo.Input("model", options=[*sorted(local_checkpoints()), *PAM_MODELS],
                               tooltip="A PAM checkpoint folder under models/pam, or a Hub id."),
                io.Combo.Input("sam2", options=[*local_sam2_files(), DEFAULT_SAM2],
                               tooltip="SAM 2.1 weights (.pt or .safetensors) under models/sam2, or a Hub id. "
                                       "PAM was trained on SAM 2.1 Hiera-L."),
                io.Combo.Input("device", options=["auto", "cpu"], default="auto",
                               tooltip="auto: ComfyUI's main device (GPU when there is one)."),
                io.Combo.Input("dtype", options=["auto", *DTYPES], default="auto",
                               tooltip="Precision of the Perceiver and the LLM (SAM 2 stays float32). auto: "
                                       "float32 on CPU, bfloat16/float16 on GPUs that support it."),
                io.Boolean.Input("keep_loaded", default=False,
                                 tooltip="Keep the model on the GPU between runs instead of moving it to "
                                         "ComfyUI's offload device (faster, holds VRAM)."),
                io.Boolean.Input("download_from_hub", default=False,
                                 tooltip="Allow downloading missing Hub weights (several GB). Off: nothing is "
                                         "downloaded. HF_HUB_OFFLINE=1 always wins."),
                io.Int.Input("max_batch", default=0, min=0, max=256, optional=True,
                             tooltip="Regions (x tasks) generated together; 0 = automatic (fixed on CPU, from free "
                                     "memory on a GPU). Progress and Cancel act between batches."),
            ],
            outputs=[PAMModelType.Output(display_name="pam_model")],
        )

    @classmethod
    def execute(cls, model, sam2, device, dtype, keep_loaded, download_from_hub, max_batch=0) -> io.NodeOutput:
        local = local_checkpoints()
        if model not in local and model not in PAM_MODELS:  # a listed folder that is gone: never read it as a Hub id
            raise WeightsNotFoundError(f"PAM checkpoint {model!r} is not in models/pam. {missing_weights_help()}")
        sam2_path = folder_paths.get_full_path(SAM2_FOLDER, sam2) if sam2 != DEFAULT_SAM2 else None
        if sam2 != DEFAULT_SAM2 and sam2_path is None:
            raise WeightsNotFoundError(f"SAM 2 weights {sam2!r} are not in models/sam2. {missing_weights_help()}")
        compute = mm.get_torch_device() if device == "auto" else torch.device("cpu")
        source = ModelSource(model=local.get(model, model), sam2=sam2_path or sam2, device=compute,
                             dtype=comfy_dtype(dtype, compute), local_files_only=None if download_from_hub else True)
        try:
            pam = load_pam(source, max_batch=max_batch or None)
        except WeightsNotFoundError as exc:
            raise WeightsNotFoundError(f"{exc}\n{missing_weights_help()}") from exc
        handle = PAMHandle(pam, compute, pam.model.dtype, mm.unet_offload_device(), keep_loaded)
        handle.rest()
        return io.NodeOutput(handle)
