"""Self-contained checks on a random-weight checkpoint written by pam_core itself (no shared fixture)."""

import numpy as np
import pytest
import torch

from pam_core import PAM, GenerationSettings, Region
from pam_core.synthetic import write_random_checkpoint

IMAGE = (np.random.RandomState(0).rand(120, 160, 3) * 255).astype(np.uint8)
REGIONS = [Region.from_box([10, 10, 80, 90]), Region.from_points([[50, 50], [100, 20]], [1, 0])]
SETTINGS = GenerationSettings(max_new_tokens=6, min_new_tokens=6)


@pytest.fixture(scope="module")
def synthetic_pam(synthetic_checkpoint):
    folder, sam2 = synthetic_checkpoint
    return PAM.from_pretrained(folder, sam2=sam2, device="cpu", local_files_only=True)


def test_both_checkpoint_layouts_load_to_the_same_model(synthetic_pam, synthetic_checkpoint, tmp_path):
    folder, sam2 = synthetic_checkpoint
    sharded = write_random_checkpoint(tmp_path / "sharded", sharded=True, sam2_weights=sam2)
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    other = PAM.from_pretrained(sharded, sam2=sam2, device="cpu", local_files_only=True)
    a = synthetic_pam.describe(IMAGE, REGIONS, task="brief", generation=SETTINGS)
    b = other.describe(IMAGE, REGIONS, task="brief", generation=SETTINGS)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b))


def test_describe_is_deterministic_and_complete(synthetic_pam):
    first = synthetic_pam.describe(IMAGE, REGIONS, task="detailed", generation=SETTINGS)
    second = synthetic_pam.describe(IMAGE, REGIONS, task="detailed", generation=SETTINGS)
    assert [r.token_ids for r in first] == [r.token_ids for r in second]
    for result in first:
        assert result.mask.shape == (120, 160) and result.mask.dtype == bool
        assert len(result.token_ids["detailed"]) == 6
        assert isinstance(result.text, str)
        assert set(result.to_dict()) >= {"box", "mask_score", "object_score", "text", "task", "lang"}


def test_visual_embedding_layout(synthetic_pam):
    _, features = synthetic_pam.encode(IMAGE)
    analysis = synthetic_pam.analyze(features, REGIONS[0])
    hidden = synthetic_pam.model.config.llm.hidden_size
    assert analysis.visual_embeds.shape == (1024 + 1 + 16 + 1, hidden)
    assert torch.equal(analysis.visual_embeds[1024], synthetic_pam.model.image_newline)
    assert torch.equal(analysis.visual_embeds[-1], synthetic_pam.model.semT_newline)
    embeds, ids = synthetic_pam.model.prompt_embeds(pam_task("category"), analysis.visual_embeds)
    assert ids.count(-200) == 1
    assert embeds.shape[0] == len(ids) - 1 + 1042


def pam_task(name):
    from pam_core.tasks import resolve_task

    return resolve_task(name, "en")


def test_sam2_weights_load_from_safetensors_too(synthetic_pam, synthetic_checkpoint):
    from safetensors.torch import save_file

    folder, sam2 = synthetic_checkpoint
    converted = sam2.with_suffix(".safetensors")  # beside the .pt, so the same-named yaml is found
    save_file(torch.load(sam2, map_location="cpu", weights_only=True)["model"], str(converted))
    other = PAM.from_pretrained(folder, sam2=converted, device="cpu", local_files_only=True)
    assert torch.equal(other.encode(IMAGE)[1].image_embed, synthetic_pam.encode(IMAGE)[1].image_embed)


def test_rows_that_finish_early_leave_the_batch_without_changing_the_others(synthetic_pam):
    """Batched greedy decoding in which rows end at different steps gives each row exactly what it gives
    alone: when a row leaves, the KV cache (`batch_select_indices`), attention mask, positions and the
    repetition penalty's history of the rows that go on stay aligned. (The end-of-turn ids are taken from
    what the random model generates, so rows do end early.)"""
    from pam_core.generation import DecodingSpec, decode

    model = synthetic_pam.model
    _, features = synthetic_pam.encode(IMAGE)
    visual = torch.stack([a.visual_embeds for a in synthetic_pam.analyze_many(features, REGIONS)])
    tasks = [pam_task(name) for name in ("category", "detailed", "brief")]  # task texts of different lengths
    prefixes = model.prompt_prefix(visual, tasks[0])
    task_ids = [model.task_ids(task) for task in tasks]
    assert len({len(ids) for ids in task_ids}) > 1
    pad = model.tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def run(prefixes, task_ids, eos):  # rows: region 0 task 0, region 0 task 1, ...
        spec = DecodingSpec(GenerationSettings(max_new_tokens=12), 1.05, eos, pad)
        return [ids for per_region in decode(model.llm, prefixes, task_ids, spec) for ids, _ in per_region]

    free = run(prefixes, task_ids, (-1,))  # no end token: every row runs the 12 steps
    eos = (free[0][3], free[2][6])
    expected = [next((ids[:i] for i, token in enumerate(ids) if token in eos), ids) for ids in free]
    assert len({len(ids) for ids in expected}) >= 3, expected  # rows leave at different steps, others go on
    alone = [run(prefixes[r:r + 1], [task_ids[t]], eos)[0] for r in range(len(REGIONS)) for t in range(len(tasks))]
    assert run(prefixes, task_ids, eos) == alone == expected
