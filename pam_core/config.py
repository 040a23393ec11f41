"""PAM's configuration: the checkpoint's `config.json` plus the constants the reference hard-codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import Qwen2Config

from .errors import CheckpointError

MODEL_TYPE = "llava_qwen"

# Qwen2 fields of an official PAM config.json that describe the LLM.
_QWEN2_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
    "rope_scaling", "tie_word_embeddings", "use_sliding_window", "sliding_window", "max_window_layers",
    "attention_dropout", "bos_token_id", "eos_token_id", "initializer_range",
)
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "mm_vision_tower", "mm_hidden_size", "mm_projector_type")


@dataclass(frozen=True)
class PerceiverConfig:
    """Semantic Perceiver shape; the reference hard-codes these (sem_perceiver.py)."""

    num_sem_tokens: int = 16
    depth: int = 2
    embedding_dim: int = 256
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2


@dataclass(frozen=True)
class PAMConfig:
    """Everything needed to build a PAM model; `from_dict` reads an official `config.json`."""

    llm: Qwen2Config
    mm_hidden_size: int = 256
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_tower: str = "sam2.1_hiera_l"
    tokenizer_model_max_length: int | None = 12288
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    # Video: frames the LLM sees, and the pixel-shuffle factors of the first / later frames.
    video_num_frames: int = 16
    image_shuffle_factor: float = 1 / 2
    video_shuffle_factor: float = 1 / 4

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> "PAMConfig":
        model_type = data.get("model_type")
        if model_type != MODEL_TYPE:
            raise CheckpointError(
                f"{source}: model_type is {model_type!r}, expected {MODEL_TYPE!r}; this is not a PAM checkpoint "
                f"(PAM checkpoints are Perceive-Anything/PAM-1.5B or PAM-3B)"
            )
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise CheckpointError(f"{source}: missing keys {', '.join(missing)}")
        if "sam2" not in str(data["mm_vision_tower"]):
            raise CheckpointError(f"{source}: mm_vision_tower {data['mm_vision_tower']!r} is not a SAM 2 tower")
        if data.get("mm_hidden_size") != PerceiverConfig.embedding_dim:
            raise CheckpointError(f"{source}: mm_hidden_size must be 256 (SAM 2's decoder width), "
                                  f"got {data.get('mm_hidden_size')}")
        llm = Qwen2Config(**{key: data[key] for key in _QWEN2_FIELDS if data.get(key) is not None})
        return cls(
            llm=llm,
            mm_hidden_size=int(data["mm_hidden_size"]),
            mm_projector_type=str(data["mm_projector_type"]),
            mm_vision_tower=str(data["mm_vision_tower"]),
            tokenizer_model_max_length=data.get("tokenizer_model_max_length"),
        )

    def to_dict(self) -> dict[str, Any]:
        """An official-layout `config.json` for this configuration."""
        llm = self.llm.to_dict()
        out = {key: llm[key] for key in _QWEN2_FIELDS if key in llm}
        rope = llm.get("rope_parameters") or {}
        if "rope_theta" in rope:
            out["rope_theta"] = rope["rope_theta"]
        out.update(
            model_type=MODEL_TYPE,
            architectures=["LlavaQwenForCausalLM"],
            mm_vision_tower=self.mm_vision_tower,
            mm_hidden_size=self.mm_hidden_size,
            mm_projector_type=self.mm_projector_type,
            mm_use_im_start_end=False,
            mm_use_im_patch_token=False,
            tokenizer_padding_side="right",
            tokenizer_model_max_length=self.tokenizer_model_max_length,
            use_mm_proj=True,
        )
        return out
