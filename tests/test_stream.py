"""The dataset stream (`PAM.describe_stream`): every image gets exactly what `describe` gives it, while images are
read ahead, encoded in batches and their regions decoded in one continuous batch; bad images become error results;
progress, cancellation and the bounded look-ahead."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from helpers import FIXTURE, needs_fixture
from pam_core import (
    PAM,
    AutoMaskSettings,
    FeatureCache,
    GenerationSettings,
    PromptError,
    Region,
    SettingsError,
    StreamItem,
)

pytestmark = needs_fixture
SETTINGS = GenerationSettings(max_new_tokens=10)
TASKS = ["category", "What is unusual about this object?"]  # prompts of different lengths
OPEN = AutoMaskSettings(pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_side=4, min_area=0.0,
                        box_nms_thresh=0.99, max_regions=3)


def _images() -> list[Image.Image]:
    base = Image.open(FIXTURE / "inputs" / "image.png").convert("RGB")
    return [base, base.transpose(Image.FLIP_LEFT_RIGHT), base.resize((320, 240)), base.rotate(90, expand=True)]


REGIONS = [
    [Region.from_box([70, 110, 270, 340]), Region.from_points([[470, 150], [430, 200]], [1, 0])],
    [Region.from_box([300, 50, 600, 400])],
    [Region.from_box([10, 10, 200, 150]), Region.from_box([100, 100, 300, 200]), Region.from_points([[50, 60]])],
    [Region.from_box([10, 10, 200, 150])],
]


@pytest.fixture(scope="module")
def images():
    return _images()


@pytest.fixture(scope="module")
def per_image(pam, images):
    """What `describe` gives each image alone."""
    return [pam.describe(image, regions, task=TASKS, generation=SETTINGS) for image, regions in zip(images, REGIONS)]


def _same(expected, got) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert (a.index, a.prompt, a.texts, a.fields) == (b.index, b.prompt, b.texts, b.fields)
        assert a.token_ids == b.token_ids
        assert np.array_equal(a.mask, b.mask) and a.box == b.box
        assert (a.mask_score, a.object_score) == (b.mask_score, b.object_score)


@pytest.mark.parametrize("max_batch", [3, 64])
def test_each_image_gets_what_describe_gives_it(pam, images, per_image, max_batch):
    """max_batch=3: rows of the next images join the batch while earlier ones are still decoding."""
    stream = PAM(pam.model, max_batch=max_batch)
    results = list(stream.describe_stream([StreamItem(i, r, id=f"img{n}") for n, (i, r) in
                                           enumerate(zip(images, REGIONS))], task=TASKS, generation=SETTINGS))
    assert sorted(r.index for r in results) == [0, 1, 2, 3]
    for result in results:
        assert result.ok and result.id == f"img{result.index}"
        assert result.size == images[result.index].size
        _same(per_image[result.index], result.regions)


def test_images_encoded_together_give_the_same_results(pam, images, per_image):
    uncached = PAM(pam.model, cache_size=0)  # `pam`'s cache holds these images' features from `per_image`
    results = sorted(uncached.describe_stream([StreamItem(i, r) for i, r in zip(images, REGIONS)], task=TASKS,
                                              generation=SETTINGS, encoder_batch=4), key=lambda r: r.index)
    for expected, result in zip(per_image, results):
        _same(expected, result.regions)


def test_the_feature_cache_spares_the_encoder(pam, images, per_image, monkeypatch):
    """A stream puts what it encodes into the engine's feature cache, as `describe` does, and an image the cache
    holds skips the encoder: a re-run over the same images (a ComfyUI batch run again) encodes nothing."""
    engine = PAM(pam.model, cache_size=len(images))
    encoded = []
    real_encode_batch = pam.model.segmenter.encode_batch

    def counted(pixels, sizes):
        encoded.append(len(sizes))
        return real_encode_batch(pixels, sizes)

    monkeypatch.setattr(pam.model.segmenter, "encode_batch", counted)
    items = [StreamItem(i, r) for i, r in zip(images, REGIONS)]
    first = list(engine.describe_stream(items, task=TASKS, generation=SETTINGS, encoder_batch=4))
    assert encoded == [4] and len(engine.cache) == 4
    for features in engine.cache._entries.values():  # its own tensors, not views that keep the batch of 4 alive
        assert features.image_embed.untyped_storage().nbytes() == features.image_embed.nbytes
    again = list(engine.describe_stream(items[::-1], task=TASKS, generation=SETTINGS, encoder_batch=4))
    engine.describe(images[2], REGIONS[2], task=TASKS, generation=SETTINGS)
    assert encoded == [4], "cached images went through the encoder again"
    for result in first:
        _same(per_image[result.index], result.regions)
    for result in again:  # the items reversed
        _same(per_image[len(images) - 1 - result.index], result.regions)
    hashed = []
    monkeypatch.setattr(FeatureCache, "key", staticmethod(lambda image: hashed.append(image) or "key"))
    list(PAM(pam.model, cache_size=0).describe_stream(items[:1], task=TASKS, generation=SETTINGS))
    assert encoded == [4, 1] and not hashed, "a stream without a cache hashed its images"


def test_describe_everything_in_a_stream(pam, images):
    expected = pam.describe_everything(images[0], task="category", generation=SETTINGS, auto=OPEN)
    assert expected, "the open thresholds must find objects on the fixture image"
    [result] = pam.describe_stream([images[0]], task="category", generation=SETTINGS, auto=OPEN)
    _same(expected, result.regions)
    assert {r.prompt for r in result.regions} == {"auto"}


def test_bad_images_and_regions_become_error_results(pam, images, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    items = [StreamItem(tmp_path / "missing.jpg", [[0, 0, 5, 5]]), StreamItem(corrupt, [[0, 0, 5, 5]]),
             StreamItem(images[1], [Region.from_box([900, 900, 990, 990])], id="outside"),
             StreamItem(images[3], REGIONS[3], id="good")]
    results = {r.id: r for r in pam.describe_stream(items, generation=SETTINGS)}
    assert set(results) == {str(tmp_path / "missing.jpg"), str(corrupt), "outside", "good"}
    assert "missing.jpg" in results[str(tmp_path / "missing.jpg")].error
    assert "corrupt.png" in results[str(corrupt)].error
    assert "outside" in results["outside"].error and results["outside"].size == images[1].size
    assert results["good"].ok and len(results["good"].regions) == 1
    assert all(not r.regions for k, r in results.items() if k != "good")


def test_per_image_task_and_language(pam, images):
    items = [StreamItem(images[1], REGIONS[1], task="category"),
             StreamItem(images[1], REGIONS[1], task="brief", lang="zh")]
    results = sorted(pam.describe_stream(items, task="category", generation=SETTINGS), key=lambda r: r.index)
    assert list(results[0].regions[0].texts) == ["category"]
    assert list(results[1].regions[0].texts) == ["brief"] and results[1].regions[0].lang == "zh"
    [expected] = pam.describe(images[1], REGIONS[1], task="brief", lang="zh", generation=SETTINGS)
    _same([expected], results[1].regions)
    [bad] = pam.describe_stream([StreamItem(images[1], REGIONS[1], task="no-such-task")], generation=SETTINGS)
    assert "no-such-task" in bad.error


def test_regions_given_as_a_function_of_the_image_size(pam):
    """Prompts in relative coordinates (as FiftyOne's labels): a function of (width, height) the reader calls once
    it has the image; it gives what the same prompts in pixels give, and its PAMError is the image's error."""
    sizes = []

    def relative(width, height):
        sizes.append((width, height))
        return [Region.from_box([0.125 * width, 0.25 * height, 0.40625 * width, 0.6875 * height])]

    def refused(width, height):
        raise PromptError(f"no region fits a {width}x{height} image")

    image = FIXTURE / "inputs" / "image.png"  # 640x480
    items = [StreamItem(image, relative, id="relative"), StreamItem(image, refused, id="refused"),
             StreamItem(image, [Region.from_box([80, 120, 260, 330])], id="pixels"),
             StreamItem(image, lambda width, height: [], id="no regions")]
    results = {r.id: r for r in pam.describe_stream(items, task="category", generation=SETTINGS)}
    assert sizes == [(640, 480)]
    assert results["refused"].error == "no region fits a 640x480 image" and results["pixels"].ok
    assert results["no regions"].ok and results["no regions"].regions == []
    [sized], [pixels] = results["relative"].regions, results["pixels"].regions
    assert sized.token_ids == pixels.token_ids and np.array_equal(sized.mask, pixels.mask)


def test_progress_counts_images_and_regions(pam, images):
    reports = []
    list(pam.describe_stream([StreamItem(i, r) for i, r in zip(images, REGIONS)], generation=SETTINGS,
                             progress=reports.append))
    assert [p.images for p in reports] == [1, 2, 3, 4]
    assert reports[-1].regions == sum(map(len, REGIONS)) and reports[-1].failed == 0
    assert reports[-1].regions_per_s > 0 and reports[-1].images_per_s > 0


def test_cancel_stops_the_stream_and_reading_stays_bounded(pam, images):
    """Items are pulled lazily, a bounded look-ahead in front of the model; cancelling stops between steps."""
    pulled = []

    def items():
        for n in range(1000):
            pulled.append(n)
            yield StreamItem(images[2], REGIONS[3], id=str(n))

    cancel = threading.Event()
    stream = PAM(pam.model, max_batch=2)
    results = []
    for result in stream.describe_stream(items(), generation=SETTINGS, lookahead=3, cancel=cancel):
        results.append(result)
        if len(results) == 2:
            cancel.set()
    assert len(results) == 2
    assert len(pulled) <= 2 + 3 + 2  # the finished, the look-ahead, what was in the batch


def test_stream_settings_are_checked(pam):
    for bad in (dict(read_threads=0), dict(lookahead=0), dict(encoder_batch=0)):
        with pytest.raises(SettingsError, match="must be >= 1"):
            pam.describe_stream([], **bad)


@pytest.mark.slow
def test_a_compiled_decoder_gives_the_eager_token_ids(pam, images, per_image):
    """`compile_decoder`: torch.compile'd LLM steps (inductor, dynamic shapes) in float32 choose the same tokens,
    and rows joining and leaving the batch do not make it compile again (one graph, plus one for a single row):
    a compiler that retraced on every join would spend its time compiling, then fall back to eager."""
    from torch._dynamo.utils import counters

    compiled = PAM(pam.model, max_batch=3, compile_decoder=True)
    graphs = counters["stats"]["unique_graphs"]
    results = sorted(compiled.describe_stream([StreamItem(i, r) for i, r in zip(images[:2], REGIONS[:2])],
                                              task=TASKS, generation=SETTINGS), key=lambda r: r.index)
    for expected, result in zip(per_image, results):
        _same(expected, result.regions)
    assert 1 <= counters["stats"]["unique_graphs"] - graphs <= 2
    assert pam.model.decoding_llm(True) is pam.model.decoding_llm(True) is not pam.model.llm
