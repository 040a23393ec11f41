"""`describe_stream` with an image's prompts given as a function of its size (FiftyOne's relative coordinates):
called once the reader has the image, it gives what the same prompts in pixels give, its errors are the image's,
and no regions is an empty result."""

import numpy as np

from helpers import FIXTURE, needs_fixture
from pam_core import GenerationSettings, Region
from pam_core.errors import PromptError
from pam_core.stream import StreamItem

IMAGE = FIXTURE / "inputs" / "image.png"  # 640x480
RELATIVE_BOX = (0.125, 0.25, 0.40625, 0.6875)
SETTINGS = GenerationSettings(max_new_tokens=4)


@needs_fixture
def test_sized_regions_give_what_pixel_regions_give_and_their_errors_are_the_images(pam):
    sizes = []

    def relative(width, height):
        sizes.append((width, height))
        x0, y0, x1, y1 = RELATIVE_BOX
        return [Region.from_box([x0 * width, y0 * height, x1 * width, y1 * height])]

    def refused(width, height):
        raise PromptError(f"no region fits a {width}x{height} image")

    items = [StreamItem(IMAGE, relative, id="relative"), StreamItem(IMAGE, refused, id="refused"),
             StreamItem(IMAGE, [Region.from_box([80, 120, 260, 330])], id="pixels"),
             StreamItem(IMAGE, lambda width, height: [], id="no regions")]
    results = {r.id: r for r in pam.describe_stream(items, task="category", generation=SETTINGS)}
    assert sizes == [(640, 480)]
    assert results["refused"].error == "no region fits a 640x480 image" and results["pixels"].ok
    assert results["no regions"].ok and results["no regions"].regions == []
    [sized], [pixels] = results["relative"].regions, results["pixels"].regions
    assert sized.token_ids == pixels.token_ids and np.array_equal(sized.mask, pixels.mask)
