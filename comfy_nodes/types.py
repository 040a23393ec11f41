"""The pack's socket types and the values they carry, declared as ComfyUI core declares its own (`io.Model`
carries a ModelPatcher): PAM_MODEL carries a PAMHandle, PAM_REGIONS a PAMRegions (see regions.py)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from pam_core import PAM

from .regions import PAMRegions


@dataclass
class PAMHandle:
    """A loaded PAM engine, the device it runs on and the one it rests on between runs (ComfyUI's offload
    device), so a graph of several PAM nodes does not hold VRAM while other models run."""

    pam: PAM
    device: torch.device
    dtype: torch.dtype
    offload_device: torch.device
    keep_loaded: bool

    @contextlib.contextmanager
    def running(self):
        """The engine on its compute device for one run; back on the offload device afterwards unless
        keep_loaded (also when the run fails or is interrupted)."""
        self.pam.model.to_device(self.device, self.dtype)
        try:
            yield self.pam
        finally:
            self.rest()

    def rest(self) -> None:
        """Moves the model to the offload device unless it is kept loaded."""
        if not self.keep_loaded and self.offload_device != self.device:
            self.pam.model.to_device(self.offload_device, self.dtype)
            mm.soft_empty_cache()


@io.comfytype(io_type="PAM_MODEL")
class PAMModelType(io.ComfyTypeIO):
    Type = PAMHandle


@io.comfytype(io_type="PAM_REGIONS")
class PAMRegionsType(io.ComfyTypeIO):
    Type = PAMRegions
