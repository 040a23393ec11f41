"""The PAM model: frozen SAM 2 + Semantic Perceiver + two projectors + a stock transformers Qwen2 LLM."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

from . import checkpoint
from .config import PAMConfig
from .errors import CheckpointError, DeviceError
from .generation import DecodingSpec, GenerationSettings
from .perceiver import SemanticPerceiver, build_projector
from .segmenter import SAM2Segmenter, Segmentation, build_sam2
from .tasks import Task

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None`/"auto" picks cuda, then mps, then cpu; an explicit device must exist here."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r} requested but MPS is not available here")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise DeviceError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    if dtype == torch.float16 and device.type == "cpu":
        raise DeviceError("float16 is not supported on the CPU; use float32 or bfloat16")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU does not support bfloat16; use float16 or float32")
    return dtype


class PAMModel(nn.Module):
    """All of PAM's weights. SAM 2 always computes in float32 (masks and features), the Perceiver,
    projectors and LLM in `dtype` (float32 reproduces the reference exactly)."""

    def __init__(self, config: PAMConfig, sam2: nn.Module, llm: Qwen2ForCausalLM,
                 tokenizer: PreTrainedTokenizerBase, generation_defaults: Optional[dict] = None):
        super().__init__()
        hidden = config.llm.hidden_size
        self.config = config
        self.sam2 = sam2
        self.segmenter = SAM2Segmenter(sam2)
        self.vision_resampler = SemanticPerceiver(config.perceiver)
        self.mm_projector_img = build_projector(config.mm_projector_type, config.mm_hidden_size * 4, hidden)
        self.mm_projector_semT = build_projector(config.mm_projector_type, config.mm_hidden_size, hidden)
        self.image_newline = nn.Parameter(torch.zeros(hidden))
        self.semT_newline = nn.Parameter(torch.zeros(hidden))
        self.frame_newline = nn.Parameter(torch.zeros(hidden))
        self.llm = llm
        self.tokenizer = tokenizer
        self.generation_defaults = generation_defaults or {}
        self._compiled_llm: Optional[nn.Module] = None

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = checkpoint.DEFAULT_MODEL,
                        sam2: str | os.PathLike | None = None, sam2_config: str | os.PathLike | None = None,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                        local_files_only: Optional[bool] = None) -> "PAMModel":
        """Load an official PAM checkpoint (folder or Hub id) and SAM 2.1 weights.

        Nothing is downloaded when `local_files_only` is True, or when it is None and HF_HUB_OFFLINE=1;
        missing weights then raise WeightsNotFoundError saying what to download and where to put it.
        """
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        folder = checkpoint.resolve_model_dir(model, local_files_only)
        sam2_weights, sam2_yaml = checkpoint.resolve_sam2(sam2, sam2_config, local_files_only)
        config = checkpoint.read_config(folder)
        try:
            # tokenizer.json alone, as the reference's fast tokenizer reads it (AutoTokenizer would also parse
            # config.json, whose "llava_qwen" type transformers does not know). Quiet: transformers 4.x warns
            # that tokenizer_config.json names Qwen2Tokenizer, whose fast form this is.
            with _quiet_transformers():
                tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load the tokenizer of {folder}: {exc}") from exc
        llm = _load_llm(folder, config, dt, len(tokenizer))
        pam = cls(config, build_sam2(sam2_yaml, checkpoint.read_sam2_weights(sam2_weights)), llm, tokenizer,
                  checkpoint.read_generation_defaults(folder))
        pam._load_pam_weights(checkpoint.read_pam_weights(folder), folder)
        return pam.to_device(dev, dt)

    def _load_pam_weights(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        own = {k: v for k, v in self.state_dict().items() if not k.startswith(("sam2.", "llm."))}
        mismatch = checkpoint.state_dict_mismatch(own, state)
        if mismatch:
            raise CheckpointError(f"PAM weights in {folder} do not fit its config.json: {mismatch}")
        self.load_state_dict(state, strict=False)

    def to_device(self, device: torch.device, dtype: torch.dtype) -> "PAMModel":
        self.to(device)
        for module in (self.vision_resampler, self.mm_projector_img, self.mm_projector_semT, self.llm):
            module.to(dtype)
        for name in ("image_newline", "semT_newline", "frame_newline"):
            getattr(self, name).data = getattr(self, name).data.to(dtype)
        # SAM 2's random-Fourier position encoding builds its grid in float32; keep its matrix float32 too.
        self.vision_resampler.pe_layer.float()
        self.eval().requires_grad_(False)
        return self

    @property
    def device(self) -> torch.device:
        return self.image_newline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_newline.dtype

    def perceive(self, seg: Segmentation, scale_factor: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(raw semantic tokens (1, 16, 256), projected image tokens, projected semantic tokens) of one region."""
        sem, image_tokens, sem_tokens = self._perceive(seg.mid_image_embed, seg.mid_mask_tokens, scale_factor)
        return sem, image_tokens[0], sem_tokens[0]

    def _perceive(self, image_embed: torch.Tensor, mask_tokens: torch.Tensor, scale_factor: float):
        sem, image_tokens = self.vision_resampler(image_embed.to(self.dtype), mask_tokens.to(self.dtype), scale_factor)
        return sem, self.mm_projector_img(image_tokens), self.mm_projector_semT(sem)

    def image_visual_embeds(self, segs: Sequence[Segmentation]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1042, H) embeddings that replace <image>, one row per region:
        [img (1024)] [image_newline] [sem (16)] [semT_newline]; also the raw semantic tokens (B, 16, 256)."""
        image_embed = torch.cat([s.mid_image_embed for s in segs])
        mask_tokens = torch.cat([s.mid_mask_tokens for s in segs])
        sem, image_tokens, sem_tokens = self._perceive(image_embed, mask_tokens, self.config.image_shuffle_factor)
        newline = lambda p: p[None, None].expand(len(segs), 1, -1)  # noqa: E731
        embeds = torch.cat([image_tokens, newline(self.image_newline), sem_tokens, newline(self.semT_newline)], dim=1)
        return embeds, sem

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def prompt_embeds(self, task: Task, visual_embeds: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """(L, H) LLM input: the prompt's text embeddings with `visual_embeds` spliced in for <image>,
        and the prompt ids with -200 at the image position (the reference's `tokenizer_image_token`)."""
        before, after = task.prompt_parts()
        ids_after = self.tokenize(after)
        sequence = torch.cat([self.prompt_prefix(visual_embeds[None], task)[0], self._embed(ids_after)])
        limit = self.config.tokenizer_model_max_length
        if limit:
            sequence = sequence[:limit]
        return sequence, self.tokenize(before) + [-200] + ids_after

    def prompt_prefix(self, visual_embeds: torch.Tensor, task: Task) -> torch.Tensor:
        """(B, P, H): the part of the prompt every task of a region shares, i.e. the text before <image>
        (system turn, user header: the same for all tasks) followed by the visual embeddings (B, V, H)."""
        before, _ = task.prompt_parts()
        text = self._embed(self.tokenize(before))
        return torch.cat([text[None].expand(len(visual_embeds), -1, -1), visual_embeds.to(self.dtype)], dim=1)

    def task_ids(self, task: Task) -> list[int]:
        """The prompt's token ids after <image>: the task text, end of turn, assistant header."""
        return self.tokenize(task.prompt_parts()[1])

    def decoding_llm(self, compiled: bool = False) -> nn.Module:
        """The LLM that runs the one-token decoding steps (`DecodeBatch`'s `step_llm`): as loaded, or compiled by
        `torch.compile` (inductor, dynamic shapes: the batch and the KV cache change size every step). Compiled once
        per model, on first use; the same weights."""
        if not compiled:
            return self.llm
        if self._compiled_llm is None:
            self._compiled_llm = torch.compile(self.llm, dynamic=True)
        return self._compiled_llm

    def decode_text(self, ids: Sequence[int]) -> str:
        """Generated ids as text, special tokens dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def decoding_spec(self, settings: GenerationSettings) -> DecodingSpec:
        """`settings` resolved against the checkpoint's generation defaults (end-of-turn ids, repetition penalty)."""
        defaults = self.generation_defaults
        eos = defaults.get("eos_token_id") or [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        eos = eos if isinstance(eos, list) else [eos]
        penalty = settings.repetition_penalty
        if penalty is None:
            penalty = float(defaults.get("repetition_penalty", 1.0))
        return DecodingSpec(settings, penalty, tuple(eos), defaults.get("pad_token_id", eos[0]))

    def _embed(self, ids: list[int]) -> torch.Tensor:
        return self.llm.get_input_embeddings()(torch.tensor(ids, dtype=torch.long, device=self.device))


@contextlib.contextmanager
def _quiet_transformers():
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _load_llm(folder: Path, config: PAMConfig, dtype: torch.dtype, vocab: int) -> Qwen2ForCausalLM:
    """Stock transformers Qwen2 from the checkpoint's `model.*`/`lm_head` tensors, its embedding cut to
    the tokenizer's length as the reference's loader does (`resize_token_embeddings(len(tokenizer))`)."""
    try:
        # `torch_dtype`, not its 4.56 alias `dtype`: before 4.56 an unknown `dtype` goes on to the model's __init__
        # (TypeError), while 4.56+ and 5.x still take `torch_dtype` (docs/compatibility.md).
        with _quiet_transformers():  # the checkpoint's PAM and SAM 2 keys are expected to be unused here
            llm, info = Qwen2ForCausalLM.from_pretrained(
                str(folder), config=config.llm, torch_dtype=dtype, local_files_only=True,
                attn_implementation="sdpa", output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the LLM weights of {folder}: {exc}") from exc
    missing = sorted(set(info["missing_keys"]) - ({"lm_head.weight"} if config.llm.tie_word_embeddings else set()))
    if missing or info.get("mismatched_keys"):
        raise CheckpointError(f"LLM weights in {folder} do not fit its config.json: missing {missing[:4]}, "
                              f"wrong shapes {list(info.get('mismatched_keys', []))[:4]}")
    if vocab > config.llm.vocab_size:
        raise CheckpointError(f"tokenizer has {vocab} tokens but the embedding only {config.llm.vocab_size} rows")
    llm.resize_token_embeddings(vocab, mean_resizing=False)
    llm.generation_config = GenerationConfig()  # generation settings are always passed explicitly
    return llm
