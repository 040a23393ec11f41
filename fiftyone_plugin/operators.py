"""The plugin's operators: describe regions (immediate, delegated, or split into delegated shards), search
captions, and semantic search; and `queue_pam_shards`, the sharded describe_regions for scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
import yaml

from pam_core.checkpoint import DEFAULT_MODEL, DEFAULT_SAM2, DEFAULT_SAM3
from pam_core.concepts import DEFAULT_MAX_INSTANCES, DEFAULT_THRESHOLD
from pam_core.tasks import LANGUAGES, TASK_NAMES, VIDEO_CAPTION
from pam_core.video import CARRY_MODES, parse_segments

from .core import DEFAULT_MAX_REGIONS, DEFAULT_TASKS, RUNS_INFO_KEY, dataset_of, finish, run_pam
from .labels import PROMPT_LABEL_TYPES, text_fields
from .search import MATCH_MODES, caption_search_view
from .shards import Shard, check_shards
from .similarity import DEFAULT_K, compute_pam_similarity, default_brain_key, field_index, semantic_search_view
from .video import captions_field

AUTOMATIC = "__automatic__"
# Views up to this many samples may run immediately in the App; larger ones are offered for delegation only.
IMMEDIATE_MAX_SAMPLES = 8


class DescribeRegions(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="describe_regions",
            label="PAM: describe regions",
            description="Masks, categories, definitions and captions of image regions (or tracked video objects) "
                        "with the Perceive Anything Model",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_execution_options(self, ctx):
        if _queues_shards(ctx.params):  # queueing K operations takes a moment, whatever the view's size
            return foo.ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True,
                                        default_choice_to_delegated=False)
        small = len(ctx.target_view()) <= IMMEDIATE_MAX_SAMPLES
        return foo.ExecutionOptions(allow_immediate_execution=small, allow_delegated_execution=True,
                                    default_choice_to_delegated=not small)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx)
        video = ctx.dataset.media_type == "video"
        prompt_choices = types.Dropdown(label="Objects from" if video else "Regions from")
        prompt_choices.add_choice(AUTOMATIC, label="What PAM finds on the prompt frame" if video
                                  else "Describe everything (automatic regions)")
        fields = _prompt_fields(ctx.dataset)
        for name in fields:
            prompt_choices.add_choice(name, label=name)
        if video:
            inputs.enum("prompt_field", prompt_choices.values(), default=fields[0] if fields else AUTOMATIC,
                        view=prompt_choices, required=True,
                        description="A frame-level field, each of whose objects on the prompt frame is tracked, or "
                                    "the objects PAM finds there")
            inputs.int("prompt_frame", label="Prompt frame (optional)",
                       description="Frame number (from 1) whose objects are tracked; default the first that has any "
                                   "(automatic objects: frame 1)")
        else:
            inputs.enum("prompt_field", prompt_choices.values(), default=AUTOMATIC, view=prompt_choices,
                        description="A Detections (boxes or masks), Keypoints or Polylines field, or automatic regions")
            inputs.str("concepts", label="Find concepts (optional)",
                       description="Instead of the regions above: comma-separated noun phrases (e.g. person, red "
                                   "car); SAM 3 finds every instance of each, and PAM describes it")
            inputs.float("find_threshold", default=DEFAULT_THRESHOLD, label="Concept score threshold",
                         description="Keep the instances whose SAM 3 score is above this (0 to 1)")
            inputs.int("max_instances", default=DEFAULT_MAX_INSTANCES, label="Max instances per concept",
                       description="Per image, the surest first")
            inputs.str("sam3", default=DEFAULT_SAM3, label="SAM 3 weights (folder or Hub id)",
                       description="Gated on the Hub: accept the SAM License and download it first")
        task_choices = types.Dropdown(multiple=not video, label="Task" if video else "Tasks")
        for name in ((VIDEO_CAPTION,) if video else ()) + TASK_NAMES:
            task_choices.add_choice(name, label=name)
        if video:
            inputs.enum("task", task_choices.values(), default=VIDEO_CAPTION, view=task_choices,
                        description="'caption' is PAM's video task; the others are its image tasks")
        else:
            inputs.list("tasks", types.String(), default=list(DEFAULT_TASKS), required=True, view=task_choices)
        instead = "Ask this instead of the task" if video else "Also ask this"
        inputs.str("instruction", label="Free instruction (optional)",
                   description=f"{instead}, in your own words; the answer goes to the `answer` attribute")
        inputs.enum("lang", list(LANGUAGES), default="en", label="Language", view=types.RadioGroup())
        if video:
            inputs.int("window", label="Frames per caption (optional)",
                       description="One caption per this many frames; default one for the whole video")
            inputs.str("segments", label="Segments (optional)",
                       description="Instead of a window: first-last frame numbers, e.g. 1-32,33-64")
            inputs.enum("carry", list(CARRY_MODES), default="box", label="Between segments", view=types.RadioGroup(),
                        description="box: re-prompt with the last box (as PAM was trained); memory: keep tracking")
        inputs.str("label_field", default="pam", required=True, label="Output field")
        inputs.bool("overwrite", default=False, label="Overwrite",
                    description="Redo samples already done (otherwise they are skipped and an interrupted run resumes)")
        inputs.str("model", default=DEFAULT_MODEL, label="PAM checkpoint (Hub id or folder)")
        inputs.str("sam2", default=DEFAULT_SAM2, label="SAM 2.1 weights (Hub id or file)")
        inputs.int("max_regions", default=DEFAULT_MAX_REGIONS,
                   label="Max automatic objects per video" if video else "Max automatic regions per image")
        inputs.int("max_new_tokens", default=512, label="Max new tokens per text")
        inputs.int("shards", default=1, label="Split into delegated operations",
                   description="More than 1: queue this many delegated operations, each over a share of the samples, "
                               "for several `fiftyone delegated launch` workers; this run itself describes nothing")
        return types.Property(inputs, view=types.View(label="PAM: describe regions"))

    def execute(self, ctx):
        params = ctx.params
        shards = check_shards(1 if params.get("shards") is None else params["shards"])
        if params.get("shard") is None and shards > 1:
            queued = queue_describe_shards(ctx.target_view(), params, shards, self.uri)
            yield ctx.ops.notify(f"PAM: queued {len(queued)} delegated operations, one per shard; run them with "
                                 f"`fiftyone delegated launch` workers", variant="success")
            return
        options = describe_options(params, ctx.dataset.media_type)
        if params.get("shard") is not None:
            options["shard"] = Shard(params["shard"], shards)
        steps = run_pam(ctx.target_view(), **options)
        while True:
            try:
                done, total = next(steps)
            except StopIteration as stop:
                summary = stop.value
                break
            yield ctx.set_progress(progress=done / max(total, 1), label=f"PAM: {done}/{total} samples")
        if not ctx.delegated:
            yield ctx.ops.reload_dataset()
        regions = "objects" if ctx.dataset.media_type == "video" else "regions"
        yield ctx.ops.notify(f"PAM: {summary['samples']} samples described ({summary['regions']} {regions}), "
                             f"{summary['skipped']} skipped, {summary['failed']} failed", variant="success")


def describe_options(params: dict, media_type: str) -> dict:
    """The `run_pam` options of describe_regions' params."""
    prompt_field = params.get("prompt_field", AUTOMATIC)
    options = dict(
        label_field=params.get("label_field", "pam"),
        prompt_field=None if prompt_field == AUTOMATIC else prompt_field, lang=params.get("lang", "en"),
        model=params.get("model") or DEFAULT_MODEL,
        sam2=params.get("sam2") or DEFAULT_SAM2, overwrite=bool(params.get("overwrite", False)),
        max_new_tokens=int(params.get("max_new_tokens", 512)),
        max_regions=int(params.get("max_regions", DEFAULT_MAX_REGIONS)),
        local_files_only=True)  # the App never downloads weights; see the README for fetching them
    if media_type == "video":
        options.update(tasks=params.get("instruction") or params.get("task") or VIDEO_CAPTION,
                       prompt_frame=params.get("prompt_frame") or None, window=params.get("window") or None,
                       segments=parse_segments(params["segments"]) if params.get("segments") else None,
                       carry=params.get("carry") or "box")
    else:
        tasks = list(params.get("tasks") or DEFAULT_TASKS)
        if params.get("instruction"):
            tasks.append(params["instruction"])
        options["tasks"] = tasks
        concepts = [c for c in (params.get("concepts") or "").split(",") if c.strip()]
        if concepts:
            options.update(concepts=concepts, sam3=params.get("sam3") or DEFAULT_SAM3,
                           find_threshold=float(params.get("find_threshold", DEFAULT_THRESHOLD)),
                           max_instances=int(params.get("max_instances") or DEFAULT_MAX_INSTANCES))
    return options


def _queues_shards(params: dict) -> bool:
    """Whether these describe_regions params ask to queue shards (not to run one)."""
    shards = params.get("shards")
    return params.get("shard") is None and isinstance(shards, int) and shards > 1


def queue_describe_shards(sample_collection, params: dict, shards: int, operator_uri: str,
                          delegation_target: Optional[str] = None) -> list[str]:
    """Queues `shards` delegated describe_regions operations with these params, operation i over shard i of the
    collection's samples; returns their ids.

    The settings are checked, recorded and the fields declared here, once, so the K operations never race on the
    dataset's schema or info; with `overwrite`, the samples' labels are cleared here and the operations run without
    it, so that one re-queued after its worker died resumes rather than starting over.
    """
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    shards = check_shards(shards)
    dataset = dataset_of(sample_collection)
    finish(run_pam(sample_collection, **describe_options(params, dataset.media_type), prepare_only=True))
    stages = sample_collection._serialize() if isinstance(sample_collection, fo.DatasetView) else []
    shared = {name: value for name, value in params.items() if name not in ("view_target", "custom_view_target")}
    service = DelegatedOperationService()
    queued = []
    for index in range(shards):
        shard = Shard(index, shards)
        context = ExecutionContext(request_params=dict(
            dataset_name=dataset.name, dataset_id=str(dataset._doc.id), view=stages, delegated=True,
            params={**shared, "shard": index, "shards": shards, "overwrite": False}))
        operation = service.queue_operation(operator=operator_uri, label=f"PAM: describe regions ({shard})",
                                            delegation_target=delegation_target, context=context, rerunnable=True)
        queued.append(str(operation.id))
    return queued


def queue_pam_shards(sample_collection, shards: int, label_field: str = "pam", prompt_field: Optional[str] = None,
                     tasks=None, lang: str = "en", model: str = DEFAULT_MODEL, sam2: str = DEFAULT_SAM2,
                     overwrite: bool = False, *, max_new_tokens: int = 512, max_regions: int = DEFAULT_MAX_REGIONS,
                     concepts: Optional[Sequence[str]] = None, find_threshold: float = DEFAULT_THRESHOLD,
                     max_instances: int = DEFAULT_MAX_INSTANCES, sam3: str = DEFAULT_SAM3,
                     prompt_frame: Optional[int] = None, window: Optional[int] = None,
                     segments: Optional[Sequence[tuple[int, int]]] = None, carry: str = "box",
                     delegation_target: Optional[str] = None) -> list[str]:
    """`apply_pam` split into `shards` delegated describe_regions operations, each over one shard of the samples,
    for several `fiftyone delegated launch` workers to run; returns the operations' ids.

    The options are `apply_pam`'s that travel in an operation's params (JSON): `model` and `sam2` as a Hub id or a
    path every worker can read, never downloaded (workers run with local_files_only). The describe_regions operator
    must be installed in FIFTYONE_PLUGINS_DIR here and on the workers.
    """
    dataset = dataset_of(sample_collection)
    uri = f"{yaml.safe_load(Path(__file__).with_name('fiftyone.yml').read_text())['name']}/describe_regions"
    if not foo.operator_exists(uri):
        raise ValueError(f"operator {uri} is not installed in {fo.config.plugins_dir!r} (FIFTYONE_PLUGINS_DIR); "
                         f"delegated workers run it from there, so install the plugin first (docs/fiftyone.md)")
    if any("," in concept for concept in concepts or ()):
        raise ValueError(f"concepts travel as one comma-separated string; drop the commas inside {list(concepts)}")
    tasks = [tasks] if isinstance(tasks, str) else list(tasks or (VIDEO_CAPTION if dataset.media_type == "video"
                                                                  else DEFAULT_TASKS))
    params = dict(label_field=label_field, prompt_field=prompt_field or AUTOMATIC, lang=lang, model=str(model),
                  sam2=str(sam2), overwrite=overwrite, max_new_tokens=max_new_tokens, max_regions=max_regions)
    if dataset.media_type == "video":
        if len(tasks) != 1:
            raise ValueError(f"a video run has one task (or free instruction), not {tasks}")
        params.update(task=tasks[0], prompt_frame=prompt_frame, window=window, carry=carry,
                      segments=",".join(f"{first}-{last}" for first, last in segments) if segments else None)
    else:
        params["tasks"] = tasks
        if concepts:
            params.update(concepts=",".join(concepts), find_threshold=find_threshold, max_instances=max_instances,
                          sam3=str(sam3))
    return queue_describe_shards(sample_collection, params, shards, uri, delegation_target)


class SearchCaptions(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="search_captions",
            label="PAM: search captions",
            description="Show the regions whose category, definition or captions contain your words",
            icon="/assets/icon.svg",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        fields = _pam_fields(ctx.dataset)
        if not fields:
            inputs.view("none", types.Warning(label="No PAM fields yet: run 'PAM: describe regions' first"))
            return types.Property(inputs)
        inputs.enum("label_field", fields, default=fields[0], required=True, label="PAM field")
        inputs.str("query", required=True, label="Words or phrase", description="e.g. red umbrella")
        inputs.enum("match", list(MATCH_MODES), default="all", label="Match", view=types.RadioGroup())
        return types.Property(inputs, view=types.View(label="PAM: search captions"))

    def execute(self, ctx):
        field = ctx.params["label_field"]
        view = caption_search_view(ctx.dataset, field, ctx.params["query"], ctx.params.get("match", "all"))
        view = view.match(fo.ViewField(f"{field}.detections").length() > 0)
        ctx.ops.set_view(view=view)
        region_ids = view.distinct(f"{field}.detections.id")
        return {"samples": len(view), "regions": len(region_ids), "region_ids": region_ids}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("samples", label="Samples")
        outputs.int("regions", label="Matching regions")
        return types.Property(outputs)


class SemanticSearch(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="semantic_search",
            label="PAM: semantic search",
            description="Show the regions whose texts are closest in meaning to your words, best first",
            icon="/assets/icon.svg",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        fields = _pam_fields(ctx.dataset) if ctx.dataset.media_type == "image" else []
        if not fields:
            inputs.view("none", types.Warning(label="No PAM image fields yet: run 'PAM: describe regions' first "
                                                    "(semantic search indexes the regions of image datasets)"))
            return types.Property(inputs)
        inputs.enum("label_field", fields, default=fields[0], required=True, label="PAM field")
        inputs.str("query", required=True, label="Search for", description="In your own words, e.g. vehicle")
        inputs.int("k", default=DEFAULT_K, label="Regions to show",
                   description="The best this many, most similar first")
        field = ctx.params.get("label_field") or fields[0]
        if field_index(ctx.dataset, field) is None:
            inputs.view("build", types.Notice(label=f"The first search builds the text index of {field!r} "
                                                    f"(brain key {default_brain_key(field)!r}, all-MiniLM-L6-v2)"))
        return types.Property(inputs, view=types.View(label="PAM: semantic search"))

    def execute(self, ctx):
        field = ctx.params["label_field"]
        brain_key, built = field_index(ctx.dataset, field), False
        if brain_key is None:
            brain_key, built = compute_pam_similarity(ctx.dataset, field).key, True
        view = semantic_search_view(ctx.dataset, ctx.params["query"], field, int(ctx.params.get("k") or DEFAULT_K),
                                    brain_key)
        ctx.ops.set_view(view=view)
        return {"regions": len(view), "brain_key": brain_key, "built": built, "region_ids": view.values("id")}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("regions", label="Regions shown")
        outputs.str("brain_key", label="Text index (brain key)")
        return types.Property(outputs)


def _prompt_fields(dataset) -> list[str]:
    """Sample fields of images, frame fields of videos, holding labels that can prompt PAM."""
    get_schema = dataset.get_frame_field_schema if dataset.media_type == "video" else dataset.get_field_schema
    schema = {}
    for label_type in PROMPT_LABEL_TYPES:
        schema.update(get_schema(embedded_doc_type=label_type))
    return sorted(name for name in schema if name not in dataset.info.get(RUNS_INFO_KEY, {}))


def _pam_fields(dataset) -> list[str]:
    """The searchable fields PAM wrote: image runs' Detections, video runs' segment captions."""
    runs = dataset.info.get(RUNS_INFO_KEY, {})
    searchable = {captions_field(name) if dataset.media_type == "video" else name for name in runs}
    return [name for name in text_fields(dataset) if name in searchable]
