"""The Semantic Perceiver and the MLP projectors that turn SAM 2 decoder features into LLM tokens.

Built from SAM 2's own two-way attention blocks: the reference's blocks have the same structure and
parameter names, so the official `model.vision_resampler.*` weights load as they are.
"""

from __future__ import annotations

import re

import torch
from sam2.modeling.position_encoding import PositionEmbeddingRandom
from sam2.modeling.sam.transformer import Attention, TwoWayAttentionBlock
from torch import nn

from .config import PerceiverConfig
from .errors import CheckpointError


def pixel_shuffle(keys: torch.Tensor, height: int, width: int, scale_factor: float) -> torch.Tensor:
    """The reference's InternVL-style shuffle of (B, H*W, C) keys into (B, tokens, C/scale^2) tokens.

    Starts with a raw reshape of (B, N, C) to (B, C, H, W), not a permute: with scale 1/2 token index is
    (x//2)*32 + y//2 (column-major blocks). Reproduced exactly, since the weights were trained on it.
    """
    b = keys.shape[0]
    x = keys.reshape(b, -1, height, width)
    _, c, h, w = x.shape
    x = x.view(b, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(b, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    x = x.permute(0, 3, 1, 2).contiguous()
    return x.flatten(2).permute(0, 2, 1)


class SemanticPerceiver(nn.Module):
    """Mask tokens + 16 learned semantic tokens attend to the decoder's image tokens (two-way).

    Returns the 16 semantic tokens and the pixel-shuffled image tokens: 1024 x 1024 at scale 1/2
    (images, first video frame), 256 x 1024 at scale 1/4 after `proj` (later video frames).
    """

    def __init__(self, config: PerceiverConfig = PerceiverConfig()):
        super().__init__()
        dim = config.embedding_dim
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.sem_tokens = nn.Embedding(config.num_sem_tokens, dim)
        self.proj = nn.Linear(dim * 16, dim * 4)
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=dim,
                num_heads=config.num_heads,
                mlp_dim=config.mlp_dim,
                activation=nn.ReLU,
                attention_downsample_rate=config.attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(config.depth)
        )
        self.final_attn_token_to_image = Attention(dim, config.num_heads,
                                                   downsample_rate=config.attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image_embed: torch.Tensor, mask_tokens: torch.Tensor, scale_factor: float):
        """image_embed (B, 256, h, w), mask_tokens (B, 2, 256) -> (semantic tokens, image tokens)."""
        b, _, h, w = image_embed.shape
        keys = image_embed.flatten(2).permute(0, 2, 1)
        sem = self.sem_tokens.weight.unsqueeze(0).expand(b, -1, -1)
        queries = torch.cat((mask_tokens, sem), dim=1)
        query_pe = queries
        key_pe = self.pe_layer((h, w)).unsqueeze(0).flatten(2).permute(0, 2, 1).to(keys.dtype)
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=query_pe, key_pe=key_pe)
        attn_out = self.final_attn_token_to_image(q=queries + query_pe, k=keys + key_pe, v=keys)
        queries = self.norm_final_attn(queries + attn_out)
        image_tokens = pixel_shuffle(keys, h, w, scale_factor)
        if scale_factor != 1 / 2:
            image_tokens = self.proj(image_tokens)
        return queries[:, mask_tokens.shape[1]:], image_tokens


_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")


def build_projector(projector_type: str, in_dim: int, hidden: int) -> nn.Module:
    """LLaVA's projector types: "linear" or "mlp{N}x_gelu" (Linear, then N-1 x [GELU, Linear])."""
    if projector_type == "linear":
        return nn.Linear(in_dim, hidden)
    match = _MLP_GELU.match(projector_type)
    if not match:
        raise CheckpointError(f"unsupported mm_projector_type {projector_type!r} (expected linear or mlpNx_gelu)")
    modules: list[nn.Module] = [nn.Linear(in_dim, hidden)]
    for _ in range(1, int(match.group(1))):
        modules += [nn.GELU(), nn.Linear(hidden, hidden)]
    return nn.Sequential(*modules)
