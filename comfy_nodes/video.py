"""PAM Video: objects prompted on one frame of an IMAGE batch, tracked through it and captioned per segment
(thin over `pam.describe_video`)."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io, ui

from pam_core import TASK_NAMES, GenerationSettings, VideoSettings
from pam_core.tasks import VIDEO_CAPTION
from pam_core.video import CARRY_MODES, SegmentCaption

from .describe import (
    IMAGE_TASKS_HELP,
    connected_prompt_inputs,
    editor_input,
    prompt_regions,
    requested_tasks,
    text_inputs,
)
from .regions import PAMRegions
from .types import PAMModelType, PAMRegionsType


def caption_line(caption: SegmentCaption) -> str:
    """ "object 0, frames 0-31 (0.00-1.28 s): text" (times when the fps is known; the text on one line)."""
    times = f" ({caption.start_time:.2f}-{caption.end_time:.2f} s)" if caption.end_time is not None else ""
    return (f"object {caption.object}, frames {caption.start_frame}-{caption.end_frame}{times}: "
            f"{' '.join(caption.text.split())}")


class PAMVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PAMVideo", display_name="PAM Video", category="PAM",
            description="Tracks the clicked or connected objects through a video with SAM 2 and captions each one "
                        "per time segment with PAM. Connect the video's frames (Load Video -> Get Video "
                        "Components, or any IMAGE batch) and its fps. The prompts sit on frame `frame`: each box "
                        "and each mask is one object, all points together one more. The editor shows the first "
                        "frame of a connected Load Video (or the Load Image picture).",
            inputs=[
                PAMModelType.Input("pam_model"),
                io.Image.Input("frames", tooltip="The video's frames as an IMAGE batch [T, H, W, C], e.g. Get "
                                                 "Video Components' images."),
                editor_input(),
                io.Int.Input("frame", default=0, min=0, max=10_000_000,
                             tooltip="The frame (0-based) the prompts are on. Objects are tracked forward from it "
                                     "and back to the start of its segment; captions start there."),
                *text_inputs((VIDEO_CAPTION, *TASK_NAMES), default=VIDEO_CAPTION, more_tasks=False,
                             task_help=f"caption: the video task PAM was trained on (each segment's caption sees "
                                       f"the previous one). The image tasks work too: {IMAGE_TASKS_HELP}"),
                io.Int.Input("window", default=0, min=0, max=10_000_000, optional=True,
                             tooltip="Caption segments of this many frames; 0 = the whole clip is one segment "
                                     "(or the segments below)."),
                io.String.Input("segments", default="", optional=True,
                                tooltip='Caption segments as inclusive frame ranges, e.g. "0-31,32-63" (ascending; '
                                        'instead of window). Empty: the whole clip, or the window.'),
                io.Combo.Input("carry", options=list(CARRY_MODES), default=VideoSettings.carry, optional=True,
                               tooltip="How an object passes to the next segment: box = re-prompted with its last "
                                       "box (the reference); memory = SAM 2 keeps tracking through the whole clip."),
                io.Float.Input("fps", default=0.0, min=0.0, max=1000.0, step=0.001, optional=True,
                               tooltip="Frames per second, for the caption times (connect Get Video Components' "
                                       "fps). 0 = unknown: frame numbers only."),
                *connected_prompt_inputs("object"),
            ],
            outputs=[
                io.Mask.Output(display_name="masks",
                               tooltip="One mask per input frame [T, H, W]: the union of all tracked objects on "
                                       "that frame (empty where none is tracked), so it plugs into any per-frame "
                                       "mask node."),
                io.String.Output(display_name="captions",
                                 tooltip="One line per object and segment: object, frame range, times, caption."),
                PAMRegionsType.Output(display_name="regions",
                                      tooltip="Per frame, every tracked object on its own (mask, box, scores, the "
                                              "caption of its segment), for PAM Overlay and PAM Regions to Text / "
                                              "JSON (where 'image' is the frame and 'index' the object)."),
            ],
            is_output_node=True,  # runs on its own and shows the captions on the node
        )

    @classmethod
    def execute(cls, pam_model, frames, prompt, frame, task, lang, instruction="", max_new_tokens=512, window=0,
                segments="", carry=VideoSettings.carry, fps=0.0, positive_points=None, negative_points=None,
                bboxes=None, mask=None) -> io.NodeOutput:
        [task] = requested_tasks(task, instruction)
        settings = VideoSettings(frame=frame, task=task, lang=lang, segments=(segments or "").strip() or None,
                                 window=window or None, carry=carry)
        regions = prompt_regions(prompt, positive_points, negative_points, bboxes, mask, frames.shape[1],
                                 frames.shape[2])
        bar = comfy.utils.ProgressBar(frames.shape[0])

        def progress(done: int, total: int, _message: str) -> None:  # after each tracked frame
            mm.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total=total)

        with pam_model.running() as pam:
            result = pam.describe_video(frames, regions, settings, fps=fps or None, progress=progress,
                                        generation=GenerationSettings(max_new_tokens=max_new_tokens))
        # the name the captions carry: video_caption, an image task or free
        found = PAMRegions.from_video(result, [r.kind for r in regions], settings.caption_task.name, lang)
        captions = "\n".join(caption_line(c) for c in result.captions)
        return io.NodeOutput(found.union_masks(), captions, found, ui=ui.PreviewText(captions))
