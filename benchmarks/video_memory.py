"""Peak memory and time of `pam describe-video` on a short and a long synthetic clip, same settings.

Each run is a fresh process (so its peak RSS is its own): it writes the clip as an mp4 (PyAV), loads a
random-weight PAM (`pam_core.synthetic`: tiny Hiera trunk, every 256-d SAM 2 decoder/memory width real,
tiny Qwen2), then tracks one box through the clip and captions it every `--window` frames, writing masks
to disk as the CLI does. Memory must not grow with the clip: the target is peak RSS(long) / RSS(short) <= 1.3.
`--reference` also measures, for contrast, the same tracking the way the reference runs it (upstream
`SAM2VideoPredictor.init_state` over all frames + `propagate_in_video`, SAM 2 only, no captions).

    python benchmarks/video_memory.py                   # 64 vs 512 frames, SAM 2 input 256 px (minutes on 2 cores)
    python benchmarks/video_memory.py --image-size 1024 # the real SAM 2 input size (slow on a CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BOX = [30, 60, 110, 140]


def write_clip(path: Path, frames: int, width: int = 320, height: int = 240, fps: int = 30) -> None:
    """A square moving over a textured background, H.264 in mp4."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            image = background.copy()
            x = 30 + int(100 * (1 + np.sin(index / 20)))
            image[60:140, x:x + 80] = (220, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_model(folder: Path, image_size: int) -> tuple[Path, Path]:
    from omegaconf import OmegaConf

    from pam_core.synthetic import write_random_checkpoint, write_random_sam2

    sam2 = write_random_sam2(folder / "sam2")
    config = sam2.with_suffix(".yaml")
    cfg = OmegaConf.load(config)
    cfg.model.image_size = image_size  # no weight depends on it
    OmegaConf.save(cfg, config)
    return write_random_checkpoint(folder / "pam"), sam2


def reference_tracking(pam, clip: Path, folder: Path) -> int:
    """SAM 2's own video predictor as the reference drives it: every frame loaded first, all memory kept."""
    import numpy as np

    from pam_core.video import open_video

    folder.mkdir()
    for index, image, _ in open_video(clip).frames():
        image.save(folder / f"{index:05d}.jpg", quality=95)
    predictor = pam.model.sam2
    state = predictor.init_state(video_path=str(folder))
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=np.array(BOX, dtype=np.float32))
    return sum(int((logits > 0).any()) for _, _, logits in predictor.propagate_in_video(state))


def child(args) -> None:
    """One measured run; prints a JSON line."""
    import torch

    from pam_core import PAM, GenerationSettings, Region
    from pam_core.cli.describe_video import OutputWriter

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    clip = work / f"clip_{args.frames}.mp4"
    write_clip(clip, args.frames)
    pam = PAM.from_pretrained(work / "model" / "pam", sam2=work / "model" / "sam2" / "sam2.1_hiera_synthetic.pt",
                              device=args.device, local_files_only=True)
    loaded_rss = _peak_rss_mib()
    if args.mode == "reference":
        start = time.perf_counter()
        with torch.inference_mode():
            tracked = reference_tracking(pam, clip, work / f"jpeg_{args.frames}")
        print(json.dumps({"frames": args.frames, "seconds": time.perf_counter() - start,
                          "peak_rss_mib": _peak_rss_mib(), "rss_after_load_mib": loaded_rss, "captions": 0,
                          "frames_written": tracked, "peak_gpu_mib": None}), flush=True)
        return
    writer = OutputWriter(work / f"out_{args.frames}", png_masks=False)
    start = time.perf_counter()
    result = pam.describe_video(clip, [Region.from_box(BOX)], window=args.window,
                                generation=GenerationSettings(max_new_tokens=8), on_frame=writer.frame,
                                on_caption=writer.caption, keep_frames=False)
    seconds = time.perf_counter() - start
    writer.close()
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and args.device != "cpu" else None
    print(json.dumps({"frames": args.frames, "seconds": seconds, "peak_rss_mib": _peak_rss_mib(),
                      "rss_after_load_mib": loaded_rss, "captions": len(result.captions),
                      "frames_written": writer.frames, "peak_gpu_mib": gpu}), flush=True)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=64, help="frames of the short clip (default 64)")
    parser.add_argument("--long", type=int, default=512, help="frames of the long clip (default 512)")
    parser.add_argument("--window", type=int, default=32, help="caption segment length (default 32)")
    parser.add_argument("--image-size", type=int, default=256, help="SAM 2 input size (default 256; real: 1024)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference", action="store_true",
                        help="also measure the reference's way (all frames loaded, SAM 2 only) for contrast")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="streaming", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    modes = ["streaming", "reference"] if args.reference else ["streaming"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="pam-video-bench-") as work:
        write_model(Path(work) / "model", args.image_size)
        for mode in modes:
            for frames in (args.short, args.long):
                command = [sys.executable, __file__, "--child", "--frames", str(frames), "--work", work, "--mode", mode,
                           "--window", str(args.window), "--device", args.device, "--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(done.stdout + done.stderr, file=sys.stderr)
                    return 1
                run = results[mode, frames] = json.loads(done.stdout.strip().splitlines()[-1])
                gpu = f", peak GPU {run['peak_gpu_mib']:.1f} MiB" if run["peak_gpu_mib"] else ""
                print(f"{mode:>9} {frames:5d} frames: {run['seconds']:7.1f} s "
                      f"({run['seconds'] / frames * 1000:6.0f} ms/frame), peak RSS {run['peak_rss_mib']:7.1f} MiB "
                      f"(after loading {run['rss_after_load_mib']:.1f} MiB), {run['captions']} captions{gpu}",
                      flush=True)
    for mode in modes:
        short, long = results[mode, args.short], results[mode, args.long]
        rss_ratio = long["peak_rss_mib"] / short["peak_rss_mib"]
        print(f"{mode}: peak RSS ratio {args.long}/{args.short} frames {rss_ratio:.3f}, "
              f"time ratio {long['seconds'] / short['seconds']:.2f} for {args.long / args.short:.0f}x the frames")
    ratio = results["streaming", args.long]["peak_rss_mib"] / results["streaming", args.short]["peak_rss_mib"]
    print(f"target: streaming peak RSS ratio <= 1.3: {'met' if ratio <= 1.3 else 'MISSED'} ({ratio:.3f}); "
          f"SAM 2 input {args.image_size} px, device {args.device}, {args.threads} thread(s)")
    return 0 if ratio <= 1.3 else 1


if __name__ == "__main__":
    sys.exit(main())
