"""The nodes that ask PAM about regions: prompts or masks in, masks and text out (thin over pam_core)."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io, ui

from pam_core import (
    LANGUAGES,
    PAM,
    TASK_NAMES,
    AutoMaskSettings,
    GenerationSettings,
    PromptError,
    Region,
    RegionResult,
    StreamItem,
    StreamProgress,
    StreamResult,
)
from pam_core.automask import ORDERS
from pam_core.concepts import DEFAULT_MAX_INSTANCES, DEFAULT_THRESHOLD, Sam3Like
from pam_core.tasks import resolve_tasks

from .prompts import Prompts, mask_regions, parse_boxes, parse_editor, parse_points
from .regions import PAMRegions
from .types import PAMHandle, PAMModelType, PAMRegionsType

CUSTOM_TASK = "custom instruction"

NO_REGION = ("no region to describe: click on the image in the editor (left = positive point, right = negative "
             "point, drag = box), or connect points, bboxes or a mask")


IMAGE_TASKS_HELP = ("category: a label; definition: label + definition; brief / detailed: a caption; "
                    "custom instruction: the instruction text below.")


def text_inputs(tasks=TASK_NAMES, default: str = "brief", task_help: str = IMAGE_TASKS_HELP,
                more_tasks: bool = True) -> list:
    """Task, language and length inputs shared by every describe node (`more_tasks` where a node takes several)."""
    inputs = [
        io.Combo.Input("task", options=[*tasks, CUSTOM_TASK], default=default, tooltip=task_help),
        io.Combo.Input("lang", options=list(LANGUAGES), default="en", tooltip="Language of the text (en, zh)."),
        io.String.Input("instruction", default="", multiline=False, optional=True,
                        tooltip="Your own instruction (several words), used when task is 'custom instruction'."),
        io.Int.Input("max_new_tokens", default=512, min=1, max=4096, optional=True,
                     tooltip="Longest text per region, in tokens (generation is greedy, so results repeat)."),
    ]
    if more_tasks:
        inputs.append(io.String.Input(
            "more_tasks", default="", optional=True,
            tooltip="Further tasks for every region, comma-separated (e.g. 'category, detailed'); each region's "
                    "image features are computed once for all of its texts."))
    return inputs


def editor_input() -> io.String.Input:
    """The prompt the JS editor (web/pam_prompt_editor.js) writes when the node's picture is clicked."""
    return io.String.Input("prompt", default="", multiline=True,
                           tooltip='Set by the editor: {"positive": [{"x":..,"y":..}], "negative": [...], '
                                   '"boxes": [[x0,y0,x1,y1]]} in image pixels. A KJNodes point list works too.')


def connected_prompt_inputs(unit: str) -> list:
    """Optional prompt sockets besides the editor: KJNodes point strings, BBOX boxes and masks; each box and
    each mask is one `unit` (region / object)."""
    return [
        io.String.Input("positive_points", force_input=True, optional=True,
                        tooltip='Positive points, KJNodes Points Editor format [{"x":..,"y":..}].'),
        io.String.Input("negative_points", force_input=True, optional=True,
                        tooltip='Negative points, KJNodes Points Editor format [{"x":..,"y":..}].'),
        io.BBOX.Input("bboxes", optional=True, tooltip=f"Boxes [x0, y0, x1, y1] in pixels; each is one {unit}."),
        io.Mask.Input("mask", optional=True, tooltip=f"Masks [B, H, W]; each is one {unit} (resized to the "
                                                     f"image if needed)."),
    ]


def prompt_regions(prompt: str, positive_points, negative_points, bboxes, mask, height: int, width: int,
                   each_point_is_a_region: bool = False) -> list[Region]:
    """The editor prompt and the connected prompts as Regions: boxes, then the points, then the masks."""
    prompts = parse_editor(prompt) + Prompts(parse_points(positive_points, "positive_points"),
                                             parse_points(negative_points, "negative_points"), parse_boxes(bboxes))
    regions = prompts.regions(each_point_is_a_region)
    if mask is not None:
        regions += mask_regions(mask, height, width)
    return regions


def region_outputs() -> list:
    return [io.Mask.Output(display_name="masks", tooltip="One mask per region, image by image [N, H, W]."),
            io.String.Output(display_name="captions", tooltip="One line of text per region."),
            PAMRegionsType.Output(display_name="regions", tooltip="Masks, boxes, scores and texts for the "
                                                                    "Regions to Text / JSON and Overlay nodes.")]


def requested_tasks(task: str, instruction: str | None, more_tasks: str | None = None) -> list[str]:
    """The task inputs as the task list pam_core resolves: the combo's choice (the instruction text for
    'custom instruction'), then the comma-separated more_tasks."""
    chosen = (instruction or "").strip() if task == CUSTOM_TASK else task
    return [chosen, *(name.strip() for name in (more_tasks or "").split(",") if name.strip())]


def checked_tasks(task: str, instruction: str | None, more_tasks: str | None, lang: str) -> list[str]:
    """`requested_tasks`, resolved once here so that a bad task fails before the model moves to its device."""
    tasks = requested_tasks(task, instruction, more_tasks)
    resolve_tasks(tasks, lang)
    return tasks


@dataclass
class BatchRequest:
    """What a node asks PAM about every image of an IMAGE batch: the regions of each image, or (`regions` None)
    everything SAM 2 finds, or the SAM 3 instances of `concepts`."""

    tasks: list[str]
    lang: str
    regions: Optional[list[list[Region]]] = None  # per image
    auto: AutoMaskSettings = field(default_factory=AutoMaskSettings)
    concepts: Optional[list[str]] = None
    threshold: float = DEFAULT_THRESHOLD  # for concepts: which of SAM 3's instances, and with which SAM 3
    max_instances: Optional[int] = DEFAULT_MAX_INSTANCES
    sam3: Sam3Like = None

    def describe_one(self, pam: PAM, frame: torch.Tensor, settings: GenerationSettings,
                     progress: Callable) -> list[RegionResult]:
        """One image through the per-image API, whose progress counts regions (and whose feature cache keeps the
        image for the next run)."""
        common = dict(task=self.tasks, lang=self.lang, generation=settings, progress=progress)
        if self.concepts:
            return pam.find(frame, self.concepts, threshold=self.threshold, max_instances=self.max_instances,
                            sam3=self.sam3, **common)
        if self.regions is None:
            return pam.describe_everything(frame, auto=self.auto, **common)
        return pam.describe(frame, self.regions[0], **common) if self.regions[0] else []

    def describe_stream(self, pam: PAM, images: torch.Tensor, settings: GenerationSettings,
                        progress: Callable) -> Iterator[StreamResult]:
        """Several images through the streaming engine: their regions decode together."""
        items = [StreamItem(frame, None if self.regions is None else self.regions[i], id=str(i),
                            concepts=self.concepts or None) for i, frame in enumerate(images)]
        return pam.describe_stream(items, task=self.tasks, lang=self.lang, generation=settings, auto=self.auto,
                                   progress=progress, cancel=ComfyCancel, find_threshold=self.threshold,
                                   max_instances=self.max_instances, sam3=self.sam3)


class ComfyCancel:
    """ComfyUI's Cancel as the streaming engine's cancel flag, which it reads between decoding steps."""

    @staticmethod
    def is_set() -> bool:
        return mm.processing_interrupted()


def describe_batch(pam_model: PAMHandle, image: torch.Tensor, request: BatchRequest,
                   max_new_tokens: int) -> io.NodeOutput:
    """Every image of an IMAGE batch [B, H, W, C]. One image goes through the per-image API; the progress bar counts
    its regions (before each batch of regions), and each report is where a Cancel takes effect. Several images go
    through the streaming engine, which decodes the regions of different images together; the bar counts images,
    and a Cancel takes effect at the next decoding step. A region that does not fit its image is an error that
    names the image."""
    batch, height, width = image.shape[0], image.shape[1], image.shape[2]
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    with pam_model.running() as pam:
        if batch == 1:
            bar = comfy.utils.ProgressBar(1)

            def region_progress(index: int, count: int, _message: str) -> None:
                mm.throw_exception_if_processing_interrupted()
                if count:  # 0 while the regions are still being found
                    bar.update_absolute(index, total=count)
            per_image = [request.describe_one(pam, image[0], settings, region_progress)]
        else:
            bar = comfy.utils.ProgressBar(batch)

            def image_progress(progress: StreamProgress) -> None:
                mm.throw_exception_if_processing_interrupted()
                bar.update_absolute(progress.images, total=batch)
            per_image = [[] for _ in range(batch)]
            with closing(request.describe_stream(pam, image, settings, image_progress)) as stream:
                for result in stream:
                    if not result.ok:
                        raise PromptError(f"image {result.index + 1} of the batch: {result.error}")
                    per_image[result.index] = result.regions
            mm.throw_exception_if_processing_interrupted()  # a stream the Cancel stopped ends early
    found = PAMRegions(per_image, [(height, width)] * batch)
    captions = "\n".join(found.lines())
    return io.NodeOutput(found.masks(), captions, found, ui=ui.PreviewText(captions))


def regions_request(regions: list[list[Region]], tasks: list[str], lang: str) -> BatchRequest:
    """Each image with its own regions (`regions[image index]`); none at all is an error."""
    if not any(regions):
        raise PromptError(NO_REGION)
    return BatchRequest(tasks, lang, regions)


class PAMSegmentDescribe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PAMSegmentDescribe", display_name="PAM Segment & Describe", category="PAM",
            description="Segments the clicked or connected regions with SAM 2 and describes each with PAM. "
                        "In the editor: left-click = positive point, right-click = negative point, drag = box. "
                        "Each box is one region; all points together are one region (or one per positive "
                        "point); every mask of the optional mask input is one region. The same prompts apply "
                        "to every image of a batch.",
            inputs=[
                PAMModelType.Input("pam_model"),
                io.Image.Input("image"),
                editor_input(),
                *text_inputs(),
                io.Boolean.Input("each_point_is_a_region", default=False, optional=True,
                                 tooltip="On: every positive point is its own region (negative points apply to "
                                         "all). Off: all points describe one region."),
                *connected_prompt_inputs("region"),
            ],
            outputs=region_outputs(),
            is_output_node=True,  # runs on its own and shows the captions on the node
        )

    @classmethod
    def execute(cls, pam_model, image, prompt, task, lang, instruction="", max_new_tokens=512, more_tasks="",
                each_point_is_a_region=False, positive_points=None, negative_points=None, bboxes=None,
                mask=None) -> io.NodeOutput:
        regions = prompt_regions(prompt, positive_points, negative_points, bboxes, mask, image.shape[1],
                                 image.shape[2], each_point_is_a_region)
        request = regions_request([regions] * image.shape[0], checked_tasks(task, instruction, more_tasks, lang), lang)
        return describe_batch(pam_model, image, request, max_new_tokens)


class PAMDescribeMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PAMDescribeMasks", display_name="PAM Describe Masks", category="PAM",
            description="Describes regions given as masks from any segmenter. With one image every mask is a "
                        "region of it; with a batch of B images and B masks, mask i belongs to image i.",
            inputs=[PAMModelType.Input("pam_model"), io.Image.Input("image"),
                    io.Mask.Input("mask", tooltip="Masks [N, H, W], resized to the image when their size differs."),
                    *text_inputs()],
            outputs=region_outputs(),
            is_output_node=True,  # runs on its own and shows the captions on the node
        )

    @classmethod
    def execute(cls, pam_model, image, mask, task, lang, instruction="", max_new_tokens=512,
                more_tasks="") -> io.NodeOutput:
        regions = mask_regions(mask, image.shape[1], image.shape[2])
        if image.shape[0] > 1 and len(regions) != image.shape[0]:
            raise PromptError(f"{image.shape[0]} images but {len(regions)} masks: give one image with any number "
                              f"of masks, or one mask per image")
        per_image = [regions] if image.shape[0] == 1 else [[region] for region in regions]
        request = regions_request(per_image, checked_tasks(task, instruction, more_tasks, lang), lang)
        return describe_batch(pam_model, image, request, max_new_tokens)


class PAMDescribeEverything(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = AutoMaskSettings()
        return io.Schema(
            node_id="PAMDescribeEverything", display_name="PAM Describe Everything", category="PAM",
            description="Finds the objects of each image without a prompt (SAM 2's automatic mask generation: a "
                        "grid of points, quality thresholds, overlap removal) and describes each one like a box "
                        "around it; largest (or surest) first.",
            inputs=[
                PAMModelType.Input("pam_model"), io.Image.Input("image"), *text_inputs(),
                io.Int.Input("max_regions", default=defaults.max_regions, min=1, max=256, optional=True,
                             tooltip="At most this many regions per image (the text is the slow part)."),
                io.Combo.Input("order", options=list(ORDERS), default=defaults.order, optional=True,
                               tooltip="Keep the largest regions (area) or those SAM 2 is surest of (score)."),
                io.Int.Input("points_per_side", default=defaults.points_per_side, min=1, max=64, optional=True,
                             tooltip="N x N grid of point prompts (SAM 2's generator uses 32; 16 is 4x faster)."),
                io.Float.Input("pred_iou_thresh", default=defaults.pred_iou_thresh, min=0.0, max=1.0, step=0.01,
                               optional=True, tooltip="Drop masks whose predicted IoU is lower."),
                io.Float.Input("stability_score_thresh", default=defaults.stability_score_thresh, min=0.0, max=1.0,
                               step=0.01, optional=True, tooltip="Drop masks that change when the threshold moves."),
                io.Float.Input("min_area", default=defaults.min_area, min=0.0, max=1.0, step=0.001, optional=True,
                               tooltip="Drop regions smaller than this fraction of the image."),
            ],
            outputs=region_outputs(),
            is_output_node=True,
        )

    @classmethod
    def execute(cls, pam_model, image, task, lang, instruction="", max_new_tokens=512, more_tasks="",
                **automask) -> io.NodeOutput:
        auto = AutoMaskSettings(**{name: value for name, value in automask.items() if value is not None})
        request = BatchRequest(checked_tasks(task, instruction, more_tasks, lang), lang, auto=auto)
        return describe_batch(pam_model, image, request, max_new_tokens)
