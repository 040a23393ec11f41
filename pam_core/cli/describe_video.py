"""`pam describe-video`: track prompted objects through a video, write masks as they come, caption segments.

Output folder: `tracks.jsonl` (one line per frame: every object's RLE mask, box and scores),
`captions.jsonl` (one line per object and segment), optional `masks/obj_NN/FFFFFF.png`, and `results.json`
last, which marks a complete run. Every line and file is whole when written, so an interrupted run leaves
valid output for the frames it reached.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import PromptError, VideoError
from ..generation import GenerationSettings
from ..io import mask_to_png, save_png, write_json
from ..prompts import Region
from ..tasks import LANGUAGES
from ..video import CARRY_MODES, VideoPrompt, VideoSettings, open_video, plan_segments
from . import common


def add_parser(commands) -> None:
    defaults = VideoSettings()
    parser = commands.add_parser(
        "describe-video",
        parents=[common.prompt_options(video=True), common.concept_options(video=True), common.model_options(),
                 common.decoding_options(), common.sampling_options()],
        help="track objects through a video and caption them per segment",
        description="Each --box and each --mask is one object; all --point options together form one object. "
                    "A prompt sits on --frame, or on the frame given after '@'. --find instead makes every "
                    "instance of a concept that SAM 3 finds on --frame an object (a box prompt there).")
    parser.add_argument("video", help="video file (mp4, webm, mov, ...), or a folder of frame images")
    parser.add_argument("--frame", type=int, default=defaults.frame,
                        help="frame the prompts sit on (default: %(default)s)")
    parser.add_argument("--task", default=defaults.task,
                        help="caption (the video task PAM was trained on; default) | category | definition | brief | "
                             "detailed | a free instruction in quotes")
    parser.add_argument("--lang", default=defaults.lang, choices=LANGUAGES,
                        help="language of the task prompt (default: %(default)s)")
    parser.add_argument("--segments", default=None, metavar="0-31,32-63,...",
                        help="caption segments, inclusive frame ranges (default: the whole video)")
    parser.add_argument("--window", type=int, default=None, metavar="N", help="caption segments of N frames each")
    parser.add_argument("--carry", default=defaults.carry, choices=CARRY_MODES,
                        help="how the object passes to the next segment: re-prompted with its last box (the "
                             "reference; default) or SAM 2's memory kept across segments")
    parser.add_argument("--forward-only", dest="backward", action="store_false",
                        help="track from each prompt frame forward only (default: also backward to the start of the "
                             "prompt's segment, or of the video with --carry memory)")
    parser.add_argument("--fps", type=float, default=None, help="frame rate of a frame folder, for timestamps")
    parser.add_argument("--png-masks", action="store_true", help="also write every mask as masks/obj_NN/FFFFFF.png")
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(run=run)


def _on_frame(text: str, default_frame: int) -> tuple[str, int]:
    """`PROMPT@FRAME` -> (PROMPT, FRAME); a prompt without '@' sits on `default_frame`."""
    body, _, frame = text.rpartition("@") if "@" in text else (text, "", "")
    if not frame:
        return body, default_frame
    if not frame.isdigit():
        raise PromptError(f"prompt {text!r}: the frame after '@' must be a frame number")
    return body, int(frame)


def _prompts(args, settings: VideoSettings) -> list[VideoPrompt]:
    prompts = []
    for text in args.box:
        body, frame = _on_frame(text, settings.frame)
        prompts.append(VideoPrompt(common.box_region(body), frame))
    if args.point:
        prompts.append(VideoPrompt(common.points_region(args.point), settings.frame))
    for text in args.mask:
        body, frame = _on_frame(text, settings.frame)
        prompts.append(VideoPrompt(Region.from_mask(body), frame))
    if prompts and args.find:
        raise PromptError("--find finds the objects itself; drop --box, --point and --mask")
    if not prompts and not args.find:
        raise PromptError("give at least one object: --box, --point, --mask or --find")
    return prompts


def _found_prompts(finder, source, args, concepts: list[str], frame: int) -> tuple[list[VideoPrompt], list[dict]]:
    """Every instance SAM 3 finds on `frame` as a box prompt there, and its concept and score for results.json."""
    image = next(image for index, image, _ in source.frames() if index == frame)
    instances = finder.find(image, concepts, threshold=args.find_threshold, max_instances=args.max_instances)
    common.log(f"found {len(instances)} instance(s) of {', '.join(concepts)} on frame {frame}")
    return ([VideoPrompt(Region.from_box(i.box), frame) for i in instances],
            [{"concept": i.concept, "concept_score": i.score} for i in instances])


class OutputWriter:
    """Appends frames and captions as they come; each JSON line is written and flushed in one piece."""

    def __init__(self, out: Path, png_masks: bool):
        self.out, self.png_masks = out, png_masks
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").unlink(missing_ok=True)  # results.json marks a complete run
        self.tracks = open(out / "tracks.jsonl", "w", encoding="utf-8")
        self.captions = open(out / "captions.jsonl", "w", encoding="utf-8")
        self.frames = 0

    @staticmethod
    def _line(handle, record) -> None:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()

    def frame(self, tracked) -> None:
        self._line(self.tracks, {"frame": tracked[0].frame, "time": tracked[0].time,
                                 "objects": [{k: v for k, v in t.to_dict().items() if k not in ("frame", "time")}
                                             for t in tracked]})
        if self.png_masks:
            for t in tracked:
                save_png(self.out / "masks" / f"obj_{t.object:02d}" / f"{t.frame:06d}.png", mask_to_png(t.mask))
        self.frames += 1

    def caption(self, caption) -> None:
        self._line(self.captions, caption.to_dict())
        common.log(f"object {caption.object}, frames {caption.start_frame}-{caption.end_frame}: {caption.text}")

    def close(self) -> None:
        self.tracks.close()
        self.captions.close()


def run(args) -> int:
    settings = common.settings_from(args, VideoSettings)
    generation = common.settings_from(args, GenerationSettings)
    prompts = _prompts(args, settings)
    concepts = common.concepts_of(args)
    source = open_video(args.video, args.fps)
    info = source.info
    plan = plan_segments(info.num_frames, settings.segments, settings.window)
    common.log(f"{args.video}: {info.num_frames} frames, {info.width}x{info.height}, fps {info.fps or 'unknown'}")
    if concepts and not 0 <= settings.frame < info.num_frames:
        raise VideoError(f"--frame {settings.frame} is not a frame of the video (0-{info.num_frames - 1})")

    start = time.time()
    finder = common.concept_finder(args) if concepts else None  # a missing SAM 3 fails before PAM loads
    pam = common.load_model(args)
    found = [{}] * len(prompts)
    if concepts:
        prompts, found = _found_prompts(pam.concept_finder(finder), source, args, concepts, settings.frame)
    out = Path(args.out)
    writer = OutputWriter(out, args.png_masks)
    try:  # no instance found: no object to track, an empty result
        result = pam.describe_video(source, prompts, settings, generation=generation, on_frame=writer.frame,
                                    on_caption=writer.caption, keep_frames=False,
                                    progress=common.progress_log(start)) if prompts else None
    finally:
        writer.close()
    write_json(out / "results.json", {
        "video": str(args.video), "num_frames": info.num_frames, "width": info.width, "height": info.height,
        "fps": info.fps, "model": common.model_source(args).name, "task": settings.task, "lang": settings.lang,
        "carry": settings.carry,
        "prompts": [{"object": i, "frame": p.frame, "prompt": p.region.kind, **concept}
                    for i, (p, concept) in enumerate(zip(prompts, found))],
        "segments": [[s.start, s.end] for s in plan],
        "captions": [c.to_dict() for c in result.captions] if result else [],
        "tracks": "tracks.jsonl", "frames_written": writer.frames,
    })
    common.log(f"wrote {writer.frames} frame(s) and {len(result.captions) if result else 0} caption(s) to {out} "
        f"in {time.time() - start:.1f} s")
    return 0
