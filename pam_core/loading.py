"""The one way hosts and the CLI load PAM: a `ModelSource` naming the weights, and a small bounded cache of
loaded models so a long-lived host (a ComfyUI server, the FiftyOne App) does not load the same weights twice
and does not keep every model it ever loaded alive."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import DEFAULT_MODEL, DEFAULT_SAM2
from .engine import PAM
from .errors import SettingsError
from .model import PAMModel

# How many distinct models a process keeps loaded (PAM-1.5B is several GB); PAM_MODEL_CACHE_SIZE overrides it.
DEFAULT_MODEL_CACHE_SIZE = 1


@dataclass(frozen=True)
class ModelSource:
    """Which PAM checkpoint and SAM 2.1 weights to load, and where they run.

    `model`/`sam2`: a local folder / file or a Hub id. `local_files_only`: never download (None: only when
    HF_HUB_OFFLINE=1 is set). `device`: auto, cpu, cuda, cuda:N or mps; `dtype`: float32, bfloat16, float16."""

    model: str = DEFAULT_MODEL
    sam2: str = DEFAULT_SAM2
    sam2_config: Optional[str] = None
    device: str = "auto"
    dtype: Optional[str] = None
    # Not part of the identity: weights already loaded are the same weights whether downloads were allowed.
    local_files_only: Optional[bool] = field(default=None, compare=False)

    def __post_init__(self):
        # Paths, torch devices and dtypes compare by their text, so equal settings share one cache entry.
        for name in ("model", "sam2", "sam2_config", "device", "dtype"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                text = str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else str(value)
                object.__setattr__(self, name, text)

    @property
    def name(self) -> str:
        """What results record as the model: the Hub id, or the folder's own name (never a local path)."""
        path = Path(self.model).expanduser()
        return path.resolve().name if path.exists() else self.model


class ModelCache:
    """Loaded models by `ModelSource`, least recently used dropped first."""

    def __init__(self, size: int):
        if size < 0:
            raise SettingsError(f"the model cache size must be >= 0, got {size}")
        self.size = size
        self._models: OrderedDict[ModelSource, PAMModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: ModelSource) -> PAMModel:
        with self._lock:  # one load at a time: two threads asking for the same weights load them once
            model = self._models.pop(source, None)
            if model is None:
                # Make room before loading, so the process never holds size + 1 models at its peak.
                while self._models and len(self._models) >= self.size:
                    self._models.popitem(last=False)
                model = PAMModel.from_pretrained(source.model, sam2=source.sam2, sam2_config=source.sam2_config,
                                                 device=source.device, dtype=source.dtype,
                                                 local_files_only=source.local_files_only)
            if self.size:
                self._models[source] = model
                while len(self._models) > self.size:
                    self._models.popitem(last=False)
            return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)


def _cache_size() -> int:
    text = os.environ.get("PAM_MODEL_CACHE_SIZE", "").strip()
    try:
        return int(text) if text else DEFAULT_MODEL_CACHE_SIZE
    except ValueError:
        raise SettingsError(f"PAM_MODEL_CACHE_SIZE must be a whole number, got {text!r}") from None


MODELS = ModelCache(_cache_size())


def load_pam(source: ModelSource = ModelSource(), *, max_batch: Optional[int] = None, cache_size: int = 4,
             compile_decoder: bool = False) -> PAM:
    """A PAM engine on the cached model of `source` (loaded on first use). Engines are cheap: each has its own
    encoder feature cache (`cache_size` images) and decoding batch size, and engines of one source share
    the weights."""
    return PAM(MODELS.get(source), cache_size=cache_size, max_batch=max_batch, compile_decoder=compile_decoder)
