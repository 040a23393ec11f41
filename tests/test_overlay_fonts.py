"""Overlay labels in Chinese are drawn with real glyphs, not boxes ("tofu"): the label's pixels are compared with
the default font's rendering of the same text, which has no CJK glyphs. The CLI's overlay.png and the ComfyUI
Overlay node both draw with pam_core.io.draw_overlay."""

import logging

import numpy as np
import pytest
from PIL import Image, ImageFont

from pam_core import fonts
from pam_core.io import draw_overlay

BOX = (20, 40, 180, 90)  # the label is written above the box, in the rows 0..40


def label_pixels(label: str) -> np.ndarray:
    """The rows above the box of an overlay on a black image: the label's background and its white glyphs."""
    image = Image.new("RGB", (200, 100))
    overlay = draw_overlay(image, [(np.zeros((100, 200), dtype=bool), BOX, label)])
    return np.asarray(overlay)[:BOX[1], :, :].astype(np.int16)


def ink(pixels: np.ndarray) -> np.ndarray:
    """How much of each pixel is the label's white text, 0 to 1: the label's background is the first palette
    colour (230, 25, 75), whose darkest channel white text lifts from 25 to 255; the black image stays 0."""
    return (pixels.min(axis=-1) - 25).clip(0) / 230


def ink_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(ink(a) - ink(b)).sum())


@pytest.fixture
def no_cjk_font(monkeypatch):
    """As on a machine without a CJK font: the lookup finds nothing, so the default font draws."""
    monkeypatch.setattr(fonts, "cjk_font_path", lambda: None)
    fonts._warn_missing_font.cache_clear()
    yield
    fonts._warn_missing_font.cache_clear()


def test_a_cjk_font_is_found():
    assert fonts.cjk_font_path() is not None, fonts.MISSING_FONT_HINT


def test_chinese_labels_have_glyphs_not_boxes(request):
    dog, cat = label_pixels("狗在草地上"), label_pixels("猫在草地上")  # "dog on the grass", "cat on the grass"
    per_character = ink(dog).sum() / 5
    assert per_character > 20
    # two different characters look different (the default font draws both as the same box) ...
    assert ink_difference(dog, cat) > 0.4 * per_character
    # ... and the text is not what the default font draws
    request.getfixturevalue("no_cjk_font")
    tofu_dog, tofu_cat = label_pixels("狗在草地上"), label_pixels("猫在草地上")
    assert np.array_equal(tofu_dog, tofu_cat)  # boxes: the comparison of dog and cat above would catch them
    assert ink_difference(dog, tofu_dog) > 0.5 * max(ink(dog).sum(), ink(tofu_dog).sum())


def test_ascii_labels_keep_the_default_font():
    assert fonts.label_font("dog").getbbox("dog") == ImageFont.load_default().getbbox("dog")
    assert fonts.label_font("狗").path == str(fonts.cjk_font_path())


def test_without_a_cjk_font_labels_are_still_drawn_and_the_warning_comes_once(no_cjk_font, caplog):
    with caplog.at_level(logging.WARNING, logger="pam_core.fonts"):
        first = label_pixels("红色的车")
        label_pixels("蓝色的车")
        label_pixels("a red car")
    assert ink(first).sum() > 0
    assert [record.getMessage() for record in caplog.records] == [fonts.MISSING_FONT_HINT]
    assert "pam-suite[cjk]" in fonts.MISSING_FONT_HINT
