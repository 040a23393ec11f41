"""Video: frame sources, segment plans, streaming tracking and captions, `pam describe-video`.

Parity with the reference's video path is checked in test_parity.py (the fixture's video case).
"""

import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import FIXTURE, interruptible, needs_fixture
from pam_core import GenerationSettings, Region
from pam_core.errors import PromptError, SettingsError, TaskError, VideoError
from pam_core.video import (
    VideoPrompt,
    VideoSettings,
    llm_frame_indices,
    mask_to_rle,
    open_video,
    parse_segments,
    plan_segments,
    rle_to_mask,
)

FRAMES = sorted((FIXTURE / "inputs" / "video").glob("*.jpg"))
BOX = [30, 50, 110, 130]  # the fixture's video prompt (320x240 frames)
FAST = GenerationSettings(max_new_tokens=4)


def _write_mp4(path, frames):
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for file in frames:
            image = np.asarray(Image.open(file).convert("RGB"))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _frame_folder(tmp_path, count, names=None):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, file in enumerate(FRAMES[:count]):
        shutil.copy(file, folder / (names[index] if names else file.name))
    return folder


# ------------------------------------------------------------------------------------ no model needed

def test_llm_frames_follow_the_reference_and_short_clips_repeat_frames():
    assert llm_frame_indices(20) == [0, 1, 2, 3, 4, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 19]  # fixture summary
    assert llm_frame_indices(16) == list(range(16))
    assert llm_frame_indices(3) == [0] + [1] * 7 + [2] * 8
    assert sorted(set(llm_frame_indices(15))) == list(range(15)) and len(llm_frame_indices(15)) == 16
    assert llm_frame_indices(1) == [0] * 16


def test_segment_plans():
    assert plan_segments(100) == [plan_segments(100, window=100)[0]]
    windows = plan_segments(70, window=32)
    assert [(s.start, s.end) for s in windows] == [(0, 31), (32, 63), (64, 69)]
    assert [(s.start, s.end) for s in plan_segments(50, parse_segments("0-9, 20-99"))] == [(0, 9), (20, 49)]
    for bad in ("0-9,5-20", "9-3"):
        with pytest.raises(VideoError):
            VideoSettings(segments=bad)
    with pytest.raises(VideoError, match="after the last frame"):
        plan_segments(50, VideoSettings(segments="60-70").segments)
    with pytest.raises(VideoError, match="START-END"):
        parse_segments("0:31")
    with pytest.raises(VideoError, match="not both"):
        VideoSettings(segments=[(0, 9)], window=5)
    with pytest.raises(VideoError, match=">= 1"):
        VideoSettings(window=0)
    with pytest.raises(SettingsError, match="unknown video settings"):
        VideoSettings().replace(windows=3)


def test_rle_round_trip_in_coco_order():
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 2:4] = True
    rle = mask_to_rle(mask)
    assert rle == {"size": [4, 5], "counts": [9, 2, 2, 2, 5]}  # column-major runs, background first
    assert np.array_equal(rle_to_mask(rle), mask)
    full = np.ones((3, 2), dtype=bool)
    assert mask_to_rle(full)["counts"] == [0, 6] and rle_to_mask(mask_to_rle(full)).all()


@needs_fixture
def test_frame_sources_folder_array_and_file(tmp_path):
    folder = _frame_folder(tmp_path, 3, names=["f10.jpg", "f2.jpg", "f1.jpg"])
    source = open_video(folder, fps=5)
    assert (source.info.num_frames, source.info.width, source.info.height, source.info.fps) == (3, 320, 240, 5)
    frames = list(source.frames())
    assert [t for _, _, t in frames] == [0.0, 0.2, 0.4]
    # natural order: f1, f2, f10 (f1 is the fixture's 3rd frame)
    assert np.array_equal(np.asarray(frames[0][1]), np.asarray(Image.open(FRAMES[2]).convert("RGB")))
    arrays = open_video(np.stack([np.asarray(Image.open(f)) for f in FRAMES[:2]]))
    assert arrays.info.num_frames == 2 and arrays.info.fps is None
    video = open_video(_write_mp4(tmp_path / "clip.mp4", FRAMES[:5]))
    assert (video.info.num_frames, video.info.width, video.info.height, video.info.fps) == (5, 320, 240, 10)
    assert [round(t, 3) for _, _, t in video.frames()] == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_unreadable_and_empty_videos_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="no frame images"):
        open_video(tmp_path / "empty")
    with pytest.raises(VideoError, match="not found"):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(1).bytes(4096))
    pytest.importorskip("av")
    with pytest.raises(VideoError, match="cannot (read|decode)|has no video stream"):
        open_video(tmp_path / "junk.mp4")
    with pytest.raises(VideoError, match="no frames"):
        open_video([])
    folder = tmp_path / "sizes"
    folder.mkdir()
    Image.new("RGB", (32, 24)).save(folder / "0.png")
    Image.new("RGB", (30, 24)).save(folder / "1.png")
    with pytest.raises(VideoError, match="one size"):
        list(open_video(folder).frames())


# ---------------------------------------------------------------------------- with the fixture model

@needs_fixture
def test_streaming_captions_carry_the_box_and_the_previous_caption(pam, tmp_path, monkeypatch):
    asked = []
    generate = pam.generate
    monkeypatch.setattr(pam, "generate", lambda task, *a, **k: asked.append(task) or generate(task, *a, **k))
    seen, progress = [], []
    result = pam.describe_video(_frame_folder(tmp_path, 5), [Region.from_box(BOX)], window=3, fps=10,
                                generation=FAST, on_frame=seen.append, progress=lambda i, n, m: progress.append((i, n)))
    assert progress == [(i, 5) for i in range(1, 6)]
    assert [f[0].frame for f in seen] == list(range(5)) and len(result.frames) == 5
    first, second = result.captions
    assert (first.start_frame, first.end_frame, first.prompt) == (0, 2, "box")
    assert (second.start_frame, second.end_frame, second.prompt) == (3, 4, "previous box")
    assert (first.start_time, first.end_time, second.start_time, second.end_time) == pytest.approx((0, 0.3, 0.3, 0.5))
    assert first.llm_frames == [0] + [1] * 7 + [2] * 8 and len(second.llm_frames) == 16
    assert asked[0].instruction.endswith("Previous caption: None")
    assert asked[1].instruction.endswith(f"Previous caption: {first.text}") and first.text
    frame0 = result.frames[0]
    assert frame0.object_score > 0 and frame0.mask.shape == (240, 320) and frame0.mask.any()
    assert frame0.box is not None and Region.from_box(frame0.box).validated(320, 240)


@pytest.mark.slow
@needs_fixture
def test_history_conditions_the_first_segment_and_later_ones_chain_on(pam, tmp_path, monkeypatch):
    asked = []
    generate = pam.generate
    monkeypatch.setattr(pam, "generate", lambda task, *a, **k: asked.append(task) or generate(task, *a, **k))
    result = pam.describe_video(_frame_folder(tmp_path, 2), [Region.from_box(BOX)], window=1, generation=FAST,
                                history="a man opens the door.")
    first, _ = result.captions
    assert asked[0].instruction.endswith("Previous caption: a man opens the door.")
    assert asked[1].instruction.endswith(f"Previous caption: {first.text}")
    with pytest.raises(SettingsError, match="history conditions the video caption task"):
        pam.describe_video(FRAMES[:1], [Region.from_box(BOX)], task="brief", history="x")


@needs_fixture
def test_memory_carry_tracks_continuously_like_one_segment(pam, tmp_path):
    folder = _frame_folder(tmp_path, 4)
    whole = pam.describe_video(folder, [Region.from_box(BOX)], generation=FAST)
    carried = pam.describe_video(folder, [Region.from_box(BOX)], window=2, carry="memory", generation=FAST)
    assert [c.prompt for c in carried.captions] == ["box", "memory"]
    assert [c.llm_frames[0] for c in carried.captions] == [0, 2]
    for a, b in zip(whole.frames, carried.frames):
        assert a.rle == b.rle and a.object_score == pytest.approx(b.object_score, abs=1e-5)
    # the reference re-prompts instead: frame 2 is a new conditioning frame, not a tracked one
    boxed = pam.describe_video(folder, [Region.from_box(BOX)], window=2, generation=FAST)
    assert boxed.frames[2].object_score != pytest.approx(whole.frames[2].object_score, abs=1e-5)


@pytest.mark.slow
@needs_fixture
def test_objects_on_later_frames_and_several_at_once(pam, tmp_path):
    folder = _frame_folder(tmp_path, 4)
    prompts = [Region.from_box(BOX), VideoPrompt(Region.from_points([[200, 120]]), frame=2)]
    result = pam.describe_video(folder, prompts, generation=FAST, keep_frames=True)
    assert [(f.object, f.frame) for f in result.frames] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2),
                                                            (0, 3), (1, 3)]
    by_object = {c.object: c for c in result.captions}
    assert (by_object[1].start_frame, by_object[1].prompt) == (2, "points")
    assert set(by_object[1].llm_frames) == {2, 3} and by_object[1].llm_frames[0] == 2
    assert set(result.masks(1)) == {0, 1, 2, 3}
    forward = pam.describe_video(folder, prompts, generation=FAST, backward=False)
    assert set(forward.masks(1)) == {2, 3} and [c.text for c in forward.captions] == [c.text for c in result.captions]


@pytest.mark.slow
@needs_fixture
def test_backward_tracking_is_sam2_reverse_propagation(pam, tmp_path):
    """Frames before a later prompt are tracked back from it exactly as SAM2VideoPredictor's
    propagate_in_video(reverse=True) does on the same frames, and the forward track does not change."""
    torch = pytest.importorskip("torch")
    folder = _frame_folder(tmp_path, 6)
    prompt = VideoPrompt(Region.from_box(BOX), frame=4)
    progress = []
    result = pam.describe_video(folder, [prompt], generation=FAST, progress=lambda i, n, m: progress.append((i, n)))
    assert [f.frame for f in result.frames] == list(range(6))
    assert progress == [(i, 10) for i in range(1, 11)]  # 4 frames back, then the 6 frames of the video
    forward = pam.describe_video(folder, [prompt], generation=FAST, backward=False)
    assert [(f.rle, f.object_score) for f in result.frames[4:]] == [(f.rle, f.object_score) for f in forward.frames]
    assert result.captions[0].text == forward.captions[0].text

    predictor = pam.model.segmenter.model
    with torch.inference_mode():
        state = predictor.init_state(video_path=str(folder))
        predictor.add_new_points_or_box(state, frame_idx=4, obj_id=1, box=np.array(BOX, dtype=np.float32))
        expected = {f: (logits[0, 0] > 0).numpy()
                    for f, _, logits in predictor.propagate_in_video(state, start_frame_idx=4, reverse=True)}
    memory = state["output_dict_per_obj"][0]
    for tracked in result.frames[:5]:
        frame = tracked.frame
        stored = memory["non_cond_frame_outputs"].get(frame) or memory["cond_frame_outputs"][frame]
        assert np.array_equal(tracked.mask, expected[frame]), frame
        assert tracked.object_score == pytest.approx(float(stored["object_score_logits"]), abs=1e-4), frame

    # with box carry the backward track stops at the start of the prompt's segment
    split = pam.describe_video(folder, [prompt], segments=[(0, 2), (3, 5)], generation=FAST)
    assert [f.frame for f in split.frames] == [3, 4, 5]


@needs_fixture
def test_frames_between_segments_are_not_tracked_with_box_carry(pam, tmp_path):
    result = pam.describe_video(_frame_folder(tmp_path, 4), [Region.from_box(BOX)], segments=[(0, 0), (2, 3)],
                                generation=FAST)
    assert [f.frame for f in result.frames] == [0, 2, 3]
    assert [(c.start_frame, c.end_frame, c.prompt) for c in result.captions] == [(0, 0, "box"), (2, 3, "previous box")]
    assert result.captions[0].llm_frames == [0] * 16


@needs_fixture
def test_bad_video_requests_fail_before_tracking(pam, tmp_path):
    folder = _frame_folder(tmp_path, 2)
    with pytest.raises(PromptError, match="not a frame"):
        pam.describe_video(folder, [VideoPrompt(Region.from_box(BOX), frame=5)])
    with pytest.raises(PromptError, match="outside every segment"):
        pam.describe_video(folder, [VideoPrompt(Region.from_box(BOX), frame=1)], segments=[(0, 0)])
    with pytest.raises(PromptError, match="outside"):
        pam.describe_video(folder, [Region.from_box([400, 300, 500, 400])])
    with pytest.raises(PromptError, match="at least one"):
        pam.describe_video(folder, [])
    with pytest.raises(VideoError, match="carry"):
        pam.describe_video(folder, [Region.from_box(BOX)], carry="both")
    with pytest.raises(TaskError):
        pam.describe_video(folder, [Region.from_box(BOX)], task="nonsense")


# ------------------------------------------------------------------------------------------------- CLI

CLI_MODEL = ["--model", FIXTURE / "checkpoint", "--sam2", FIXTURE / "sam2" / "sam2.1_hiera_pamtiny.pt",
             "--device", "cpu", "--max-new-tokens", "4"]


@pytest.mark.slow
@needs_fixture
def test_cli_on_a_generated_mp4(pam_cli, tmp_path):
    clip = _write_mp4(tmp_path / "clip.mp4", FRAMES[:4])
    out = tmp_path / "out"
    proc = pam_cli("describe-video", clip, *CLI_MODEL, "--box", ",".join(map(str, BOX)), "--segments", "0-1,2-3",
                   "--png-masks", "--out", out)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert (results["num_frames"], results["fps"], results["frames_written"]) == (4, 10, 4)
    assert [(c["start_frame"], c["end_frame"]) for c in results["captions"]] == [(0, 1), (2, 3)]
    assert results["captions"][1]["start_time"] == pytest.approx(0.2)
    tracks = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    assert [t["frame"] for t in tracks] == [0, 1, 2, 3]
    png = np.asarray(Image.open(out / "masks" / "obj_00" / "000003.png")) > 0
    assert np.array_equal(png, rle_to_mask(tracks[3]["objects"][0]["rle"]))
    assert len((out / "captions.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
@needs_fixture
def test_cli_on_a_frame_folder_with_prompts_on_two_frames(pam_cli, tmp_path):
    folder = _frame_folder(tmp_path, 3)
    out = tmp_path / "out"
    proc = pam_cli("describe-video", folder, *CLI_MODEL, "--box", ",".join(map(str, BOX)), "--box", "150,60,260,200@1",
                   "--fps", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    tracks = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    assert [[o["object"] for o in t["objects"]] for t in tracks] == [[0, 1], [0, 1], [0, 1]]
    assert [t["time"] for t in tracks] == [0.0, 0.5, 1.0]
    results = json.loads((out / "results.json").read_text())
    assert [c["start_frame"] for c in results["captions"]] == [0, 1]
    assert "tracking back from frame 2" in proc.stderr

    proc = pam_cli("describe-video", folder, *CLI_MODEL, "--box", "150,60,260,200@1", "--forward-only", "--out", out)
    assert proc.returncode == 0, proc.stderr
    tracks = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    assert [t["frame"] for t in tracks] == [1, 2]


def test_cli_errors_are_messages(pam_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    junk = tmp_path / "junk.mov"
    junk.write_bytes(np.random.default_rng(0).bytes(2048))
    cases = [
        ([str(tmp_path / "empty"), "--box", "1,1,5,5"], "no frame images"),
        # random bytes may read as no container or as one without a video stream: either way the file is named
        ([str(junk), "--box", "1,1,5,5"], str(junk)),
        ([str(tmp_path / "empty")], "at least one object"),
        ([str(tmp_path / "empty"), "--box", "1,1,5,5@x"], "frame number"),
        ([str(tmp_path / "empty"), "--box", "1,1,5,5", "--task", "zzz"], "unknown task"),
        ([str(tmp_path / "empty"), "--box", "1,1,5,5", "--window", "0"], "window must be"),
        ([str(tmp_path / "empty"), "--box", "1,1,5,5", "--segments", "0-3", "--window", "2"], "not both"),
    ]
    for args, message in cases:
        assert message in pam_cli.error("describe-video", *args, "--out", tmp_path / "o"), args


@pytest.mark.slow
@needs_fixture
def test_cli_interrupted_leaves_valid_output(tmp_path):
    folder = _frame_folder(tmp_path, 12)
    out = tmp_path / "out"
    proc = interruptible([sys.executable, "-m", "pam_core.cli", "describe-video", str(folder), "--box",
                          ",".join(map(str, BOX)), "--window", "2", "--out", str(out), *map(str, CLI_MODEL)],
                         stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("[3/12]"):
                proc.send_signal(signal.SIGINT)
                break
        proc.stderr.read()
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "results.json").exists()
    tracks = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    assert 3 <= len(tracks) < 12 and [t["frame"] for t in tracks] == list(range(len(tracks)))
    captions = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert captions and captions[0]["end_frame"] == 1
