"""The FiftyOne plugin on video datasets against a real mongod: objects from frame-level prompts tracked into
frame Detections (`index` = track id) and captioned per segment into TemporalDetections, compared with
pam_core's own describe_video on the same mp4 and prompts (fixture checkpoint, 4 short tokens); the zoo model
as a FiftyOne video model through `apply_model`, which reads videos with ffmpeg."""

import shutil
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.zoo as foz
import numpy as np
import pytest

from fiftyone_plugin import PAMRegionModel, apply_pam, caption_search_view
from fiftyone_plugin.labels import video_prompts_from_labels
from fiftyone_plugin.operators import AUTOMATIC, describe_options
from fiftyone_plugin.panel import region_texts_markdown
from fiftyone_plugin.video import automatic_prompt_labels
from helpers import CHECKPOINT, SAM2, needs_ffmpeg, needs_fixture
from helpers import FIFTYONE_PLUGIN as PLUGIN
from pam_core import AutoMaskSettings, GenerationSettings, Region
from pam_core.errors import PromptError, SettingsError, TaskError, VideoError
from pam_core.video import VideoPrompt

pytestmark = [pytest.mark.host, needs_fixture]
FAST = GenerationSettings(max_new_tokens=4)
FRAMES = 4
# Pixel boxes of the 320x240 clip whose relative coordinates are exact binary fractions, so the prompt that
# comes back from FiftyOne's relative box is the very same pixel box.
SQUARE = (40, 60, 120, 135)
RIGHT = (200, 60, 280, 180)


def relative(box, width=320, height=240):
    x0, y0, x1, y1 = box
    return [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height]


def prompt(box, label=None):
    return fo.Detections(detections=[fo.Detection(label=label, bounding_box=relative(box))])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 4-frame 320x240 mp4 of the fixture's video frames, written with PyAV."""
    from test_video import FRAMES as FIXTURE_FRAMES
    from test_video import _write_mp4

    return _write_mp4(tmp_path_factory.mktemp("video") / "clip.mp4", FIXTURE_FRAMES[:FRAMES])


def video_dataset(name, samples):
    """A video dataset; `samples`: (filepath, {frame number: gt label}) pairs."""
    dataset = fo.Dataset(name, overwrite=True)
    for filepath, frames in samples:
        sample = fo.Sample(filepath=str(filepath))
        for number, label in frames.items():
            sample.frames[number] = fo.Frame(gt=label)
        dataset.add_sample(sample)
    return dataset


def assert_matches_pam_core(sample, expected, objects):
    """Frame labels and captions of `sample` are pam_core's `expected` VideoResult, frame numbers shifted by 1.
    `objects`: {object of `expected`: (its track id on the sample, its label)}."""
    tracked = {(f.frame + 1, objects[f.object][0]): f for f in expected.frames if f.object in objects}
    assert sorted({number for number, _ in tracked}) == list(range(1, FRAMES + 1))  # every frame is tracked
    labels = dict(objects.values())
    instances = {}
    for number, frame in sample.frames.items():
        for detection in frame.pam.detections:
            want = tracked.pop((number, detection.index))
            x0, y0, x1, y1 = (int(v) for v in want.box)
            assert detection.label == labels[detection.index]
            assert detection.bounding_box == pytest.approx(relative((x0, y0, x1, y1)))
            assert np.array_equal(detection.mask, want.mask[y0:y1, x0:x1]), (number, detection.index)
            assert detection.confidence == pytest.approx(want.mask_score)
            assert detection.object_score == pytest.approx(want.object_score)
            instances.setdefault(detection.index, set()).add(detection.instance.id)
    assert not tracked, f"tracked but not written: {sorted(tracked)}"
    assert all(len(ids) == 1 for ids in instances.values())  # one instance per track, across its frames
    written = [(d.index, d.support, d.caption, d.lang, d.label) for d in sample.pam_captions.detections]
    assert written == [(objects[c.object][0], [c.start_frame + 1, c.end_frame + 1], c.text, "en",
                        objects[c.object][1]) for c in expected.captions if c.object in objects]


def test_apply_pam_on_videos_writes_tracks_and_segment_captions(pam, clip, tmp_path, monkeypatch):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    dataset = video_dataset("pam-video", [
        (clip, {1: prompt(SQUARE, "square")}),  # an object on the first frame
        (clip, {2: fo.Detections(), 3: prompt(SQUARE)}),  # the first frame with objects is frame 3 (pam_core's 2)
        (junk, {1: prompt(SQUARE, "square")}),  # an unreadable video
    ])
    writes = {}
    collection_type = type(dataset._sample_collection)  # pymongo's Collection: also the frames' collection
    original = collection_type.bulk_write

    def counting_bulk_write(self, requests, *args, **kwargs):
        writes[self.name] = writes.get(self.name, 0) + 1
        return original(self, requests, *args, **kwargs)

    monkeypatch.setattr(collection_type, "bulk_write", counting_bulk_write)
    summary = apply_pam(dataset, prompt_field="frames.gt", model=pam, max_new_tokens=4)
    monkeypatch.undo()
    assert {k: v for k, v in summary.items() if k != "errors"} == \
        {"label_field": "pam", "samples": 2, "skipped": 0, "failed": 1, "regions": 2}
    # 3 samples and all their frames in one batch: one write for the samples, one for the frames
    assert writes == {dataset._sample_collection.name: 1, dataset._frame_collection.name: 1}, writes

    first, later, broken = dataset.iter_samples()
    # pam_core tracks and captions every object on its own: one call gives both samples' expected labels
    square = Region.from_box(SQUARE)
    expected = pam.describe_video(str(clip), [VideoPrompt(square, frame=0), VideoPrompt(square, frame=2)],
                                  generation=FAST)
    assert [(c.object, c.start_frame, c.end_frame) for c in expected.captions] == [(0, 0, 3), (1, 2, 3)]
    assert_matches_pam_core(first, expected, {0: (0, "square")})
    assert_matches_pam_core(later, expected, {1: (0, "object")})  # tracked back to frame 1, captioned from 3
    assert later.pam_captions.detections[0].support == [3, 4]
    assert first.pam_captions.detections[0].prompt_label == "square"
    assert later.pam_captions.detections[0].get_attribute_value("prompt_label", None) is None
    assert first.pam_error is None and later.pam_error is None

    assert "cannot read video" in broken.pam_error and broken.pam_captions is None
    if shutil.which("ffprobe"):  # metadata as compute_metadata stores it, read with ffprobe as FiftyOne reads it
        assert (first.metadata.frame_width, first.metadata.frame_height) == (320, 240)
        assert first.metadata.total_frame_count == FRAMES and first.metadata.mime_type == "video/mp4"
        assert later.metadata == first.metadata
    else:
        assert first.metadata is None
    assert broken.metadata is None  # ffprobe cannot read it either: left empty, as compute_metadata(skip_failures)
    assert all(frame.pam is None for frame in broken.frames.values())
    schema = dataset.get_field_schema(flat=True)
    frame_schema = dataset.get_frame_field_schema(flat=True)
    for attribute in ("caption", "pam_model", "lang", "prompt_label", "index"):
        assert f"pam_captions.detections.{attribute}" in schema, attribute
    for attribute in ("object_score", "pam_model", "index"):
        assert f"pam.detections.{attribute}" in frame_schema, attribute
    assert len(dataset.to_clips("pam_captions")) == 2

    # a re-run skips the finished videos and retries the broken one
    summary = apply_pam(dataset, prompt_field="gt", model=pam, max_new_tokens=4)
    assert (summary["skipped"], summary["samples"], summary["failed"]) == (2, 0, 1)


def test_explicit_prompts_on_two_frames_and_windows(pam, clip):
    dataset = video_dataset("pam-video-explicit", [(clip, {1: prompt(RIGHT, "right"), 3: prompt(SQUARE, "square")})])
    points = fo.Keypoints(keypoints=[fo.Keypoint(label="dot", points=[(0.5, 0.5)])])
    summary = apply_pam(dataset, prompts={1: points, 3: prompt(SQUARE, "square")}, window=2, model=pam,
                        max_new_tokens=4)
    assert summary["regions"] == 2
    sample = dataset.first()
    assert [(d.index, d.support, d.label) for d in sample.pam_captions.detections] == \
        [(0, [1, 2], "dot"), (0, [3, 4], "dot"), (1, [3, 4], "square")]
    # the square's segment starts at its prompt frame (window 2): nothing to track back to
    assert [sorted(d.index for d in frame.pam.detections) for frame in sample.frames.values()] == \
        [[0], [0], [0, 1], [0, 1]]

    # prompt_frame picks the field's objects on that frame; overwriting clears frames the new run does not track
    apply_pam(dataset, prompt_field="gt", prompt_frame=3, segments=[(3, 4)], model=pam, max_new_tokens=4,
              overwrite=True)
    sample = dataset.first()
    assert [(d.index, d.support, d.label) for d in sample.pam_captions.detections] == [(0, [3, 4], "square")]
    assert [number for number, frame in sample.frames.items() if frame.pam is not None] == [3, 4]


def test_frame_numbers_are_converted_once():
    labels = {3: prompt(SQUARE, "square"), 1: fo.Keypoints(keypoints=[fo.Keypoint(points=[(0.5, 0.5)])])}
    prompts, names = video_prompts_from_labels(labels, 320, 240)
    assert [(p.frame, p.region.kind, name) for p, name in zip(prompts, names)] == [(0, "points", None),
                                                                                   (2, "box", "square")]
    assert list(prompts[1].region.box) == pytest.approx(SQUARE)
    with pytest.raises(PromptError, match="from 1"):
        video_prompts_from_labels({0: prompt(SQUARE)}, 320, 240)


def test_bad_video_runs_fail_before_any_work(pam, clip):
    dataset = video_dataset("pam-video-bad", [(clip, {1: prompt(SQUARE)})])
    with pytest.raises(PromptError, match="not both"):
        apply_pam(dataset, prompt_field="gt", prompts={1: prompt(SQUARE)}, model=pam)
    with pytest.raises(TaskError, match="one task"):
        apply_pam(dataset, prompt_field="gt", tasks=("category", "brief"), model=pam)
    with pytest.raises(VideoError, match="start at 1"):
        apply_pam(dataset, prompt_field="gt", segments=[(0, 2)], model=pam)
    with pytest.raises(ValueError, match="does not exist"):
        apply_pam(dataset, prompt_field="nothing", model=pam)
    with pytest.raises(ValueError, match="concepts: only for image datasets"):
        apply_pam(dataset, concepts=["square"], model=pam)
    assert "pam" not in dataset.get_frame_field_schema() and "pam_captions" not in dataset.get_field_schema()
    images = fo.Dataset("pam-video-options-on-images", overwrite=True)
    images.add_sample(fo.Sample(filepath="/nonexistent/image.png"))
    with pytest.raises(ValueError, match="window: only for video datasets"):
        apply_pam(images, window=4, model=pam)


def test_describe_operator_on_a_video_dataset(clip):
    from fiftyone.operators.executor import ExecutionContext

    dataset = video_dataset("pam-video-operator", [(clip, {2: prompt(SQUARE, "square")})])
    operator = foo.get_operator(f"{PLUGIN}/describe_regions")
    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params={}))
    form = operator.resolve_input(ctx).to_json()["type"]["properties"]
    assert form["prompt_field"]["type"]["values"] == [AUTOMATIC, "gt"]  # what PAM finds, or the frame fields
    assert form["prompt_field"]["default"] == "gt"
    assert {"task", "prompt_frame", "window", "segments", "carry", "max_regions"} <= set(form)
    assert "tasks" not in form and "concepts" not in form
    params = dict(prompt_field="gt", task="caption", lang="en", label_field="pam", model=str(CHECKPOINT),
                  sam2=str(SAM2), max_new_tokens=4, segments="2-4", view_target="DATASET")
    result = foo.execute_operator(f"{PLUGIN}/describe_regions", ctx=dict(dataset=dataset, params=params))
    assert result.error is None, result.error
    sample = dataset.first()
    assert [(d.support, d.label) for d in sample.pam_captions.detections] == [([2, 4], "square")]
    assert [number for number, frame in sample.frames.items() if frame.pam is not None] == [2, 3, 4]


@pytest.mark.slow
def test_videos_without_prompts_track_what_pam_finds_on_the_prompt_frame(pam, clip):
    """apply_pam and the operator with neither a prompt field nor prompts: the objects PAM finds on the prompt frame
    are tracked and captioned, exactly as when they are given as prompts."""
    from fiftyone.operators.executor import ExecutionContext

    auto = AutoMaskSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, max_regions=2)
    found = automatic_prompt_labels(pam, str(clip), 2, auto)
    assert 1 <= len(found[2].detections) <= 2
    given = video_dataset("pam-video-found-given", [(clip, {})])
    apply_pam(given, model=pam, generation=FAST, prompts=found)
    automatic = video_dataset("pam-video-found", [(clip, {})])
    summary = apply_pam(automatic, model=pam, generation=FAST, prompt_frame=2, auto=auto)
    assert (summary["samples"], summary["regions"]) == (1, len(found[2].detections))

    def content(sample):
        return {key: (d.label, d.bounding_box, d.confidence, d.mask.tobytes())
                for key, d in frame_tracks(sample).items()}

    assert content(automatic.first()) == content(given.first())
    assert {number for number, _ in content(automatic.first())} == set(range(1, FRAMES + 1))  # tracked back to 1
    assert [d.caption for d in automatic.first().pam_captions.detections] == \
        [d.caption for d in given.first().pam_captions.detections]

    # the operator's form on a dataset without frame fields offers what PAM finds
    operator = foo.get_operator(f"{PLUGIN}/describe_regions")
    ctx = ExecutionContext(request_params=dict(dataset_name=automatic.name, params={}))
    form = operator.resolve_input(ctx).to_json()["type"]["properties"]
    assert form["prompt_field"]["type"]["values"] == [AUTOMATIC] == [form["prompt_field"]["default"]]
    assert describe_options({"prompt_field": AUTOMATIC, "max_regions": 2}, "video")["prompt_field"] is None


def test_search_and_panel_read_video_captions():
    """Segment captions stored the way apply_pam stores them are found by the search operator and listed by
    the panel."""
    dataset = fo.Dataset("pam-video-search", overwrite=True)
    sample = fo.Sample(filepath="/nonexistent/clip.mp4")
    sample.frames[1] = fo.Frame(pam=fo.Detections(detections=[fo.Detection(label="dog", bounding_box=[0, 0, 1, 1],
                                                                            index=0)]))
    sample["pam_captions"] = fo.TemporalDetections(detections=[
        fo.TemporalDetection(label="dog", support=[1, 8], index=0, caption="A brown dog runs to the red ball."),
        fo.TemporalDetection(label="dog", support=[9, 16], index=0, caption="The dog lies down on the grass."),
        fo.TemporalDetection(label="ball", support=[1, 16], index=1, caption="A red ball rolls away.")])
    dataset.add_sample(sample)
    dataset.info["pam_runs"] = {"pam": {"prompt_field": "gt", "tasks": ["caption"], "lang": "en", "model": "test"}}
    dataset.save()
    operator = foo.get_operator(f"{PLUGIN}/search_captions")
    from fiftyone.operators.executor import ExecutionContext

    form = operator.resolve_input(ExecutionContext(request_params=dict(dataset_name=dataset.name, params={})))
    assert form.to_json()["type"]["properties"]["label_field"]["type"]["values"] == ["pam_captions"]
    result = foo.execute_operator(f"{PLUGIN}/search_captions", ctx=dict(
        dataset=dataset, params=dict(label_field="pam_captions", query="red", match="all")))
    assert result.error is None, result.error
    assert result.result["regions"] == 2
    found = caption_search_view(dataset, "pam_captions", "red")
    assert [d.support for d in found.first().pam_captions.detections] == [[1, 8], [1, 16]]
    text = region_texts_markdown(dataset.first(), ["pam_captions"])
    assert "**pam_captions #2: dog**\n\n*track 0, frames 9-16*" in text and "lies down on the grass" in text


# ------------------------------------------------------------------------- the zoo model as a video model

def frame_tracks(sample, field="pam") -> dict:
    """{(frame number, track id): detection} of a sample's frame field."""
    return {(number, d.index): d for number, frame in sample.frames.items() if frame[field] is not None
            for d in frame[field].detections}


@pytest.mark.slow
@needs_ffmpeg
def test_zoo_video_model_tracks_like_apply_pam_and_masks_can_live_on_disk(pam, clip, zoo_source, tmp_path):
    """The zoo model with media_type="video" through FiftyOne's apply_model gives apply_pam's tracks, each
    frame's detection carrying its segment's caption; apply_pam's reference run writes its masks to mask_dir."""
    objects = {2: fo.Detections(detections=[fo.Detection(label="square", bounding_box=relative(SQUARE)),
                                            fo.Detection(label="right", bounding_box=relative(RIGHT))])}
    dataset = video_dataset("pam-video-zoo", [(clip, objects)])
    summary = apply_pam(dataset, prompt_field="gt", segments=[(1, 2), (3, 4)], model=pam, max_new_tokens=4,
                        mask_dir=tmp_path / "masks")
    assert summary["failed"] == 0 and summary["regions"] == 2
    reference = [(frame_tracks(sample), sample.pam_captions.detections) for sample in dataset.iter_samples()]
    files = sorted((tmp_path / "masks").iterdir())
    assert len(files) == sum(len(tracks) for tracks, _ in reference) > 0

    model = foz.load_zoo_model("pam-suite/pam-1.5b", media_type="video", segments=[(1, 2), (3, 4)],
                               max_new_tokens=4, device="cpu")
    assert model.media_type == "video"
    dataset.apply_model(model, label_field="zoo", prompt_field="gt", skip_failures=False)
    for sample, (tracks, captions) in zip(dataset.iter_samples(), reference):
        zoo = frame_tracks(sample, "zoo")
        assert sorted(zoo) == sorted(tracks) and (1, 0) in zoo
        assert sorted(c.support for c in captions) == [[2, 2], [2, 2], [3, 4], [3, 4]]
        for key, detection in zoo.items():
            on_disk = tracks[key]
            assert on_disk.mask is None and Path(on_disk.mask_path).parent == tmp_path / "masks"
            assert np.array_equal(detection.mask, on_disk.get_mask() > 0), key  # the PNG holds the same mask
            assert detection.bounding_box == pytest.approx(on_disk.bounding_box)
            assert detection.label == on_disk.label and detection.instance is not None
            # the caption of the segment holding the frame; frame 1, tracked back from the prompt on frame 2,
            # gets the caption that starts on frame 2
            number, track = key
            caption = min((c for c in captions if c.index == track and c.support[1] >= number),
                          key=lambda c: c.support[0])
            assert (detection.caption, detection.lang) == (caption.caption, "en")
    assert dataset.get_frame_field_schema()["zoo"].document_type is fo.Detections


@pytest.mark.slow
@needs_ffmpeg
def test_video_model_without_a_prompt_field_tracks_the_objects_of_the_prompt_frame(pam, clip, tmp_path):
    """Describe everything on a video: the objects PAM finds on the prompt frame are tracked; FiftyOne's
    `output_dir` puts the masks on disk."""
    auto = AutoMaskSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, max_regions=2)
    dataset = video_dataset("pam-video-auto", [(clip, {})])
    model = PAMRegionModel(model=pam, media_type="video", prompt_frame=2, auto=auto, max_new_tokens=4)
    dataset.apply_model(model, label_field="pam", output_dir=str(tmp_path / "masks"), skip_failures=False)
    from test_video import FRAMES as FIXTURE_FRAMES

    found = pam.find_regions(FIXTURE_FRAMES[1], auto)
    tracks = frame_tracks(dataset.first())
    assert 1 <= len(found) == len({track for _, track in tracks}) <= 2
    assert {number for number, _ in tracks} == set(range(1, FRAMES + 1))  # tracked back to frame 1
    for (number, track), detection in tracks.items():
        assert detection.label == "object" and detection.caption and detection.mask is None
        assert Path(detection.mask_path).is_file()
        if number == 2:  # on the prompt frame the track starts from the found box
            x0, y0, x1, y1 = found[track].box
            assert detection.bounding_box == pytest.approx(relative((x0, y0, x1, y1)), abs=2 / 240)


def test_video_model_arguments_are_checked_before_loading(clip):
    with pytest.raises(SettingsError, match="media_type must be one of image, video"):
        PAMRegionModel(model="/nonexistent", media_type="audio")
    with pytest.raises(SettingsError, match="window: only for media_type='video'"):
        PAMRegionModel(model="/nonexistent", window=4)
    with pytest.raises(TaskError, match="one task"):
        PAMRegionModel(model="/nonexistent", media_type="video", tasks=("category", "brief"))
    with pytest.raises(PromptError, match="start at 1"):
        PAMRegionModel(model="/nonexistent", media_type="video", prompt_frame=0)


@needs_ffmpeg
def test_video_model_refuses_clips_views(pam, clip):
    dataset = video_dataset("pam-video-clips", [(clip, {1: prompt(SQUARE, "square")})])
    model = PAMRegionModel(model=pam, media_type="video", max_new_tokens=4)
    with pytest.raises(VideoError, match="not to a clips view"):
        dataset.to_clips([[(1, 2)]]).apply_model(model, label_field="pam", prompt_field="gt", skip_failures=False)
