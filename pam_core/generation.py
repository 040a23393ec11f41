"""Text generation: many regions and several tasks per region decoded together.

The reference calls `generate` once per region and task, re-running the LLM over the whole 1070-position
prompt each time. Here the prompt is split where it stops being shared: the prefix (system turn, user
header, the region's visual tokens) is prefilled once per region, each task's text continues from a copy
of that KV cache, and every (region, task) sequence then decodes in one batch. Task texts of different
lengths are padded between prefix and task text; the attention mask hides the padding and position ids
skip it, so each sequence computes what it would alone (the identity tests check the token ids).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from transformers import DynamicCache, Qwen2ForCausalLM
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .errors import SettingsError

# transformers 5.x renamed the forward's `past_key_values` to `cache` (the old name warns, then goes away).
_CACHE_ARG = "cache" if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class GenerationSettings:
    """How text is decoded. Greedy by default, so the same input always gives the same text.

    `repetition_penalty=None` applies the checkpoint's `generation_config.json` value (1.05 in the
    released PAM checkpoints, which the official notebooks apply silently); pass 1.0 for pure argmax.
    Sampling (`do_sample=True`) uses `temperature`/`top_p`/`top_k` and is reproducible with `seed` for the
    same batch of regions and tasks.
    """

    max_new_tokens: int = 512
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 0.1
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    seed: Optional[int] = None

    def __post_init__(self):
        if self.max_new_tokens < 1 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise SettingsError(f"need 1 <= max_new_tokens and 0 <= min_new_tokens <= max_new_tokens, got "
                                f"{self.max_new_tokens} and {self.min_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise SettingsError(f"sampling needs a temperature > 0, got {self.temperature}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise SettingsError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclass
class Generation:
    token_ids: list[int]  # generated ids without the end-of-turn token
    text: str
    first_step_logits: Optional[torch.Tensor] = None  # (vocab,) float32, for parity checks


@dataclass(frozen=True)
class DecodingSpec:
    """Settings resolved against a checkpoint's generation defaults."""

    settings: GenerationSettings
    repetition_penalty: float
    eos_token_ids: tuple[int, ...]
    pad_token_id: int


def _logits_processors(spec: DecodingSpec, device: torch.device) -> LogitsProcessorList:
    """transformers' own processors, in the order its `generate` applies them; the ids they see are the
    generated ones only, as in `generate(inputs_embeds=...)`."""
    s = spec.settings
    processors = LogitsProcessorList()
    if spec.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(spec.repetition_penalty))
    if s.min_new_tokens > 0:
        processors.append(MinNewTokensLengthLogitsProcessor(0, s.min_new_tokens, list(spec.eos_token_ids), device))
    if s.do_sample:
        if s.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(s.temperature))
        if s.top_k:
            processors.append(TopKLogitsWarper(s.top_k))
        if s.top_p is not None and s.top_p < 1.0:
            processors.append(TopPLogitsWarper(s.top_p))
    return processors


@torch.inference_mode()
def decode(llm, prefixes: torch.Tensor, task_ids: Sequence[Sequence[int]], spec: DecodingSpec,
           return_first_logits: bool = False) -> list[list[tuple[list[int], Optional[torch.Tensor]]]]:
    """Generate for every region (prefix embeddings (R, P, H)) and every task (suffix token ids).

    Returns, per region and task, the generated ids (end-of-turn stripped) and optionally the first
    step's logits. Finished sequences leave the batch, so short answers do not wait for long ones.
    """
    regions, prefix_len, _ = prefixes.shape
    tasks = len(task_ids)
    device = prefixes.device
    cache = DynamicCache()

    def forward(**inputs) -> torch.Tensor:
        """One forward extending the cache; float32 logits of each row's last position."""
        return llm(**inputs, **{_CACHE_ARG: cache}, use_cache=True, logits_to_keep=1).logits[:, -1].float()

    forward(inputs_embeds=prefixes, attention_mask=torch.ones(regions, prefix_len, dtype=torch.long, device=device))
    if tasks > 1:
        cache.batch_repeat_interleave(tasks)  # rows: region 0 task 0, region 0 task 1, ...

    rows = regions * tasks
    suffix_len = max(len(ids) for ids in task_ids)
    suffix = torch.full((rows, suffix_len), spec.pad_token_id, dtype=torch.long, device=device)
    suffix_mask = torch.zeros(rows, suffix_len, dtype=torch.long, device=device)
    for row in range(rows):
        ids = task_ids[row % tasks]
        suffix[row, suffix_len - len(ids):] = torch.tensor(ids, dtype=torch.long, device=device)
        suffix_mask[row, suffix_len - len(ids):] = 1
    attention = torch.cat([torch.ones(rows, prefix_len, dtype=torch.long, device=device), suffix_mask], dim=1)
    positions = (attention.cumsum(-1) - 1)[:, prefix_len:]
    embed = llm.get_input_embeddings()
    logits = forward(inputs_embeds=embed(suffix), attention_mask=attention, position_ids=positions)
    first_logits = logits.clone() if return_first_logits else None

    processors = _logits_processors(spec, device)
    generator = None
    if spec.settings.do_sample and spec.settings.seed is not None:
        generator = torch.Generator(device=device).manual_seed(spec.settings.seed)
    eos = torch.tensor(spec.eos_token_ids, device=device)
    active = torch.arange(rows, device=device)  # original row of each batch row still decoding
    generated = torch.zeros(rows, 0, dtype=torch.long, device=device)
    outputs: list[list[int]] = [[] for _ in range(rows)]
    for step in range(spec.settings.max_new_tokens):
        scores = processors(generated, logits)
        if spec.settings.do_sample:
            next_ids = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[:, 0]
        else:
            next_ids = scores.argmax(dim=-1)
        done = torch.isin(next_ids, eos)
        for row, token, finished in zip(active.tolist(), next_ids.tolist(), done.tolist()):
            if not finished:
                outputs[row].append(token)
        if bool(done.all()) or step + 1 == spec.settings.max_new_tokens:
            break
        if bool(done.any()):
            keep = torch.nonzero(~done)[:, 0]
            cache.batch_select_indices(keep)
            active, next_ids, generated = active[keep], next_ids[keep], generated[keep]
            attention, positions = attention[keep], positions[keep]
        generated = torch.cat([generated, next_ids[:, None]], dim=1)
        attention = torch.cat([attention, attention.new_ones(len(active), 1)], dim=1)
        positions = positions[:, -1:] + 1
        logits = forward(inputs_embeds=embed(next_ids[:, None]), attention_mask=attention, position_ids=positions)
    return [[(outputs[r * tasks + t], first_logits[r * tasks + t] if first_logits is not None else None)
             for t in range(tasks)] for r in range(regions)]
