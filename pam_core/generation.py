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


def _layer_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every layer: transformers 5 keeps them on `layers`, 4.x in two lists."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _fit(cache: torch.Tensor, length: int) -> torch.Tensor:
    """A (rows, heads, L, dim) KV tensor as its last `length` positions, left-padded with zeros where L is shorter."""
    return _left_pad(cache[:, :, max(0, cache.shape[2] - length):], length, 2)


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class DecodeBatch:
    """Sequences decoded together, one token per `step()`, which may join and leave between steps.

    A join prefills its newcomers together (the shared prefix once per region, then each task's text) and
    appends them to the running batch: the shorter side's KV cache and attention mask are left-padded to the
    longer one, and each row keeps its own position ids, so every row computes what it would alone (the
    identity tests check the token ids). Finished rows leave at once, so short answers never wait for long
    ones and a stream of images keeps the batch full.
    """

    def __init__(self, llm, spec: DecodingSpec, return_first_logits: bool = False, step_llm=None):
        self.llm = llm
        # `step_llm` (default `llm`), e.g. a torch.compile'd `llm`, runs the one-token steps. Prefills run `llm`:
        # they are long and compute-bound, and each join brings a shape of its own that a compiler would retrace.
        self.step_llm = llm if step_llm is None else step_llm
        self.spec = spec
        self.return_first_logits = return_first_logits
        self.embed = llm.get_input_embeddings()
        self.device = self.embed.weight.device
        self.processors = _logits_processors(spec, self.device)
        self.generator = None
        if spec.settings.do_sample and spec.settings.seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(spec.settings.seed)
        self.eos = torch.tensor(spec.eos_token_ids, device=self.device)
        self.cache: Optional[DynamicCache] = None
        self.attention: Optional[torch.Tensor] = None  # (rows, cache length + pending)
        self.positions: Optional[torch.Tensor] = None  # (rows, 1): position of each row's last input
        self.logits: Optional[torch.Tensor] = None  # (rows, vocab): each row's next-token logits, pending
        self.tags: list = []  # the caller's tag of each row
        self.generated: list[list[int]] = []
        self.first_logits: list[Optional[torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self.tags)

    @staticmethod
    def _forward(llm, cache: DynamicCache, **inputs) -> torch.Tensor:
        """One forward of `llm` extending `cache`; float32 logits of each row's last position."""
        return llm(**inputs, **{_CACHE_ARG: cache}, use_cache=True, logits_to_keep=1).logits[:, -1].float()

    @torch.inference_mode()
    def join(self, prefixes: torch.Tensor, task_ids: Sequence[Sequence[int]], tags: Sequence) -> None:
        """Prefill regions (prefix embeddings (R, P, H)) with every task (suffix token ids) and add their
        R x T rows, tagged `tags` (one per row, region-major), to the batch."""
        regions, prefix_len, _ = prefixes.shape
        tasks, device = len(task_ids), self.device
        if len(tags) != regions * tasks:
            raise ValueError(f"{len(tags)} tags for {regions} regions x {tasks} tasks")
        cache = DynamicCache()
        self._forward(self.llm, cache, inputs_embeds=prefixes,
                      attention_mask=torch.ones(regions, prefix_len, dtype=torch.long, device=device))
        if tasks > 1:
            cache.batch_repeat_interleave(tasks)  # rows: region 0 task 0, region 0 task 1, ...
        rows = regions * tasks
        suffix_len = max(len(ids) for ids in task_ids)
        suffix = torch.full((rows, suffix_len), self.spec.pad_token_id, dtype=torch.long, device=device)
        suffix_mask = torch.zeros(rows, suffix_len, dtype=torch.long, device=device)
        for row in range(rows):
            ids = task_ids[row % tasks]
            suffix[row, suffix_len - len(ids):] = torch.tensor(ids, dtype=torch.long, device=device)
            suffix_mask[row, suffix_len - len(ids):] = 1
        attention = torch.cat([torch.ones(rows, prefix_len, dtype=torch.long, device=device), suffix_mask], dim=1)
        positions = (attention.cumsum(-1) - 1)[:, prefix_len:]
        logits = self._forward(self.llm, cache, inputs_embeds=self.embed(suffix), attention_mask=attention,
                               position_ids=positions)
        self._append(cache, attention, positions[:, -1:], logits, list(tags))

    def _append(self, cache: DynamicCache, attention: torch.Tensor, positions: torch.Tensor, logits: torch.Tensor,
                tags: list) -> None:
        firsts = [row.clone() for row in logits] if self.return_first_logits else [None] * len(tags)
        if self.cache is None:
            self.cache, self.attention, self.positions, self.logits = cache, attention, positions, logits
        else:
            length = max(self.attention.shape[1], attention.shape[1])
            merged = torch.cat([_left_pad(self.attention, length, 1), _left_pad(attention, length, 1)])
            # leading columns that every row masks out are dropped; what stays is one new, contiguous cache
            length -= int(merged.any(dim=0).long().argmax())
            layers = [tuple(torch.cat([_fit(old, length), _fit(new, length)]) for old, new in zip(old_kv, new_kv))
                      for old_kv, new_kv in zip(_layer_tensors(self.cache), _layer_tensors(cache))]
            self.cache = DynamicCache(layers)
            self.attention = merged[:, merged.shape[1] - length:]
            self.positions = torch.cat([self.positions, positions])
            self.logits = torch.cat([self.logits, logits])
        self.tags += tags
        self.generated += [[] for _ in tags]
        self.first_logits += firsts

    @torch.inference_mode()
    def step(self) -> list[tuple[object, list[int], Optional[torch.Tensor]]]:
        """Choose every row's next token, run one forward for the rows that go on, and return the rows that
        finished: (tag, generated ids without the end-of-turn token, first step's logits or None)."""
        if not self.tags:
            return []
        next_ids = self._choose()
        done = torch.isin(next_ids, self.eos).tolist()
        limit = self.spec.settings.max_new_tokens
        for row, (token, finished) in enumerate(zip(next_ids.tolist(), done)):
            if not finished:
                self.generated[row].append(token)
            done[row] = finished or len(self.generated[row]) >= limit
        finished_rows = [(self.tags[r], self.generated[r], self.first_logits[r]) for r in range(len(done)) if done[r]]
        if finished_rows:
            keep = [r for r in range(len(done)) if not done[r]]
            self.tags = [self.tags[r] for r in keep]
            self.generated = [self.generated[r] for r in keep]
            self.first_logits = [self.first_logits[r] for r in keep]
            if not keep:
                self.cache = self.attention = self.positions = self.logits = None
                return finished_rows
            index = torch.tensor(keep, device=self.device)
            self.cache.batch_select_indices(index)
            self.attention, self.positions, next_ids = self.attention[index], self.positions[index], next_ids[index]
        self.attention = torch.cat([self.attention, self.attention.new_ones(len(self.tags), 1)], dim=1)
        self.positions = self.positions + 1
        self.logits = self._forward(self.step_llm, self.cache, inputs_embeds=self.embed(next_ids[:, None]),
                                    attention_mask=self.attention, position_ids=self.positions)
        return finished_rows

    def _choose(self) -> torch.Tensor:
        """Next token of every row. The logits processors see each row's own generated ids, so rows that
        joined at different steps are processed in groups of equal history length."""
        groups: dict[int, list[int]] = {}
        for row, ids in enumerate(self.generated):
            groups.setdefault(len(ids), []).append(row)
        next_ids = torch.empty(len(self.generated), dtype=torch.long, device=self.device)
        for length, rows in groups.items():
            index = torch.tensor(rows, device=self.device)
            history = torch.tensor([self.generated[r] for r in rows], dtype=torch.long,
                                   device=self.device).reshape(len(rows), length)
            scores = self.processors(history, self.logits[index])
            if self.spec.settings.do_sample:
                chosen = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.generator)[:, 0]
            else:
                chosen = scores.argmax(dim=-1)
            next_ids[index] = chosen
        return next_ids


def decode(llm, prefixes: torch.Tensor, task_ids: Sequence[Sequence[int]], spec: DecodingSpec,
           return_first_logits: bool = False, step_llm=None) -> list[list[tuple[list[int], Optional[torch.Tensor]]]]:
    """Generate for every region (prefix embeddings (R, P, H)) and every task (suffix token ids); `step_llm` as
    in `DecodeBatch`.

    Returns, per region and task, the generated ids (end-of-turn stripped) and optionally the first
    step's logits.
    """
    regions, tasks = prefixes.shape[0], len(task_ids)
    batch = DecodeBatch(llm, spec, return_first_logits, step_llm)
    batch.join(prefixes, task_ids, [(r, t) for r in range(regions) for t in range(tasks)])
    results: list[list] = [[None] * tasks for _ in range(regions)]
    while len(batch):
        for (region, task), ids, first in batch.step():
            results[region][task] = (ids, first)
    return results
