"""`pam describe-video`: track prompted objects through a video, write masks as they come, caption segments.

Output folder: `tracks.jsonl` (one line per frame: every object's RLE mask, box and scores),
`captions.jsonl` (one line per object and segment), optional `masks/obj_NN/FFFFFF.png`, and `results.json`
last, which marks a complete run. Every line and file is whole when written, so an interrupted run leaves
valid output for the frames it reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import PromptError

# Options of `pam describe` that mean the same here (model loading and decoding).
SHARED_OPTIONS = ("model", "sam2", "sam2_config", "device", "dtype", "local_files_only", "max_new_tokens",
                  "repetition_penalty", "sample", "temperature", "top_p", "seed")


def add_describe_video(sub, describe: argparse.ArgumentParser) -> None:
    v = sub.add_parser("describe-video", help="track objects through a video and caption them per segment",
                       description="Each --box and each --mask is one object; all --point options together form "
                                   "one object. A prompt sits on --frame, or on the frame given after '@'.")
    v.add_argument("video", help="video file (mp4, webm, mov, ...), or a folder of frame images")
    v.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1[@FRAME]",
                   help="box of one object in pixels (repeatable; write --box=-5,... when it starts with a minus)")
    v.add_argument("--point", action="append", default=[], metavar="X,Y,1|0",
                   help="point of the point object (on --frame): 1 positive, 0 negative (repeatable)")
    v.add_argument("--mask", action="append", default=[], metavar="PNG[@FRAME]",
                   help="mask of one object: PNG at video size, non-zero = inside (repeatable)")
    v.add_argument("--frame", type=int, default=0, help="frame the prompts sit on (default: 0)")
    v.add_argument("--task", default="caption",
                   help="caption (the video task PAM was trained on; default) | category | definition | brief | "
                        "detailed | a free instruction in quotes")
    v.add_argument("--lang", default="en", choices=["en", "zh"])
    v.add_argument("--segments", default=None, metavar="0-31,32-63,...",
                   help="caption segments, inclusive frame ranges (default: the whole video)")
    v.add_argument("--window", type=int, default=None, metavar="N", help="caption segments of N frames each")
    v.add_argument("--carry", default="box", choices=["box", "memory"],
                   help="how the object passes to the next segment: re-prompted with its last box (the "
                        "reference; default) or SAM 2's memory kept across segments")
    v.add_argument("--forward-only", action="store_true",
                   help="track from each prompt frame forward only (default: also backward to the start of the "
                        "prompt's segment, or of the video with --carry memory)")
    v.add_argument("--fps", type=float, default=None, help="frame rate of a frame folder, for timestamps")
    v.add_argument("--png-masks", action="store_true", help="also write every mask as masks/obj_NN/FFFFFF.png")
    v.add_argument("--out", required=True, help="output folder")
    for action in describe._actions:
        if action.dest in SHARED_OPTIONS:
            v._add_action(action)


def _prompt(text: str, default_frame: int) -> tuple[str, int]:
    body, _, frame = text.rpartition("@") if "@" in text else (text, "", "")
    if not frame:
        return body, default_frame
    if not frame.isdigit():
        raise PromptError(f"prompt {text!r}: the frame after '@' must be a frame number")
    return body, int(frame)


def _prompts(args) -> list:
    from .cli import _numbers, parse_point
    from .prompts import Region
    from .video import VideoPrompt

    prompts = []
    for text in args.box:
        body, frame = _prompt(text, args.frame)
        prompts.append(VideoPrompt(Region.from_box(_numbers(body, 4, "box")), frame))
    if args.point:
        parsed = [parse_point(p) for p in args.point]
        prompts.append(VideoPrompt(Region.from_points([p for p, _ in parsed], [lab for _, lab in parsed]), args.frame))
    for text in args.mask:
        body, frame = _prompt(text, args.frame)
        prompts.append(VideoPrompt(Region.from_mask(body), frame))
    if not prompts:
        raise PromptError("give at least one object: --box, --point or --mask")
    return prompts


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
        from .io import mask_to_png, save_png

        self._line(self.tracks, {"frame": tracked[0].frame, "time": tracked[0].time,
                                 "objects": [{k: v for k, v in t.to_dict().items() if k not in ("frame", "time")}
                                             for t in tracked]})
        if self.png_masks:
            for t in tracked:
                save_png(self.out / "masks" / f"obj_{t.object:02d}" / f"{t.frame:06d}.png", mask_to_png(t.mask))
        self.frames += 1

    def caption(self, caption) -> None:
        self._line(self.captions, caption.to_dict())
        _log(f"object {caption.object}, frames {caption.start_frame}-{caption.end_frame}: {caption.text}")

    def close(self) -> None:
        self.tracks.close()
        self.captions.close()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_describe_video(args) -> int:
    from .cli import generation_settings, load_pam, model_source
    from .io import write_json
    from .video import VideoSettings, open_video, plan_segments

    video_settings = VideoSettings(frame=args.frame, task=args.task, lang=args.lang, segments=args.segments or None,
                                   window=args.window, carry=args.carry, backward=not args.forward_only)
    settings = generation_settings(args)
    prompts = _prompts(args)
    source = open_video(args.video, args.fps)
    plan = plan_segments(source.info.num_frames, video_settings.segments, video_settings.window)
    info = source.info
    _log(f"{args.video}: {info.num_frames} frames, {info.width}x{info.height}, fps {info.fps or 'unknown'}")

    start = time.time()
    pam = load_pam(args)
    writer = OutputWriter(Path(args.out), args.png_masks)
    try:
        result = pam.describe_video(
            source, prompts, video_settings, generation=settings, on_frame=writer.frame, on_caption=writer.caption,
            keep_frames=False, progress=lambda i, n, msg: _log(f"[{i}/{n}] {msg} ({time.time() - start:.1f} s)"))
    finally:
        writer.close()
    write_json(Path(args.out) / "results.json", {
        "video": str(args.video), "num_frames": info.num_frames, "width": info.width, "height": info.height,
        "fps": info.fps, "model": model_source(args).name, "task": args.task, "lang": args.lang, "carry": args.carry,
        "prompts": [{"object": i, "frame": p.frame, "prompt": p.region.kind} for i, p in enumerate(prompts)],
        "segments": [[s.start, s.end] for s in plan], "captions": [c.to_dict() for c in result.captions],
        "tracks": "tracks.jsonl", "frames_written": writer.frames,
    })
    _log(f"wrote {writer.frames} frame(s) and {len(result.captions)} caption(s) to {args.out} "
         f"in {time.time() - start:.1f} s")
    return 0
