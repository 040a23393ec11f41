"""The real FiftyOne App, served headless on 127.0.0.1 and driven by headless Chromium: PAM's masks and
captions must show, on images and on a video's frames. Screenshots are kept in test-artifacts/fiftyone/ for a person to
look at."""

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from fiftyone_plugin import apply_pam
from helpers import FIXTURE, REPO, free_port, needs_ffmpeg, needs_fixture

ARTIFACTS = REPO / "test-artifacts" / "fiftyone"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.host,
    needs_fixture,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test-setup/fiftyone.sh)"),
]
DATASET = "pam-app"
VIDEO_DATASET = "pam-app-video"
# Red rectangle and green disc of the fixture image, relative [x, y, w, h].
BOXES = {"rectangle": [80 / 640, 120 / 480, 180 / 640, 210 / 480], "disc": [360 / 640, 60 / 480, 200 / 640, 180 / 480]}


@pytest.fixture(scope="module")
def described(pam, tmp_path_factory):
    """A persistent dataset (the App server is another process) with PAM labels from the fixture model."""
    image = tmp_path_factory.mktemp("app") / "shapes.png"
    shutil.copy(FIXTURE / "inputs" / "image.png", image)
    dataset = fo.Dataset(DATASET, overwrite=True, persistent=True)
    prompts = fo.Detections(detections=[fo.Detection(label=k, bounding_box=v) for k, v in BOXES.items()])
    dataset.add_sample(fo.Sample(filepath=str(image), ground_truth=prompts))
    apply_pam(dataset, prompt_field="ground_truth", tasks=("category", "detailed"), model=pam, max_new_tokens=12)
    yield dataset
    dataset.delete()


@pytest.fixture(scope="module")
def described_video(pam, tmp_path_factory):
    """A persistent video dataset (a 4-frame mp4) with PAM's tracks and segment captions on one prompted square."""
    from test_video import FRAMES, _write_mp4

    clip = _write_mp4(tmp_path_factory.mktemp("app-video") / "clip.mp4", FRAMES[:4])
    dataset = fo.Dataset(VIDEO_DATASET, overwrite=True, persistent=True)
    sample = fo.Sample(filepath=str(clip))
    sample.frames[1] = fo.Frame(gt=fo.Detections(detections=[fo.Detection(
        label="square", bounding_box=[40 / 320, 60 / 240, 80 / 320, 75 / 240])]))
    dataset.add_sample(sample)
    dataset.compute_metadata()  # the App's video player needs the frame rate and count
    apply_pam(dataset, prompt_field="gt", model=pam, max_new_tokens=8)
    yield dataset
    dataset.delete()


@pytest.fixture(scope="module")
def app_url(described):
    """`fiftyone app launch` on a free 127.0.0.1 port, stopped (with its server process group) afterwards."""
    port = free_port()
    # no dataset on the command line: each test opens its own by URL, and the session does not switch it back
    command = [str(Path(sys.executable).parent / "fiftyone"), "app", "launch", "--remote",
               "--address", "127.0.0.1", "--port", str(port), "--wait", "-1"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "app-server.log", "wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                os.killpg(server.pid, signal.SIGKILL)
                pytest.fail(f"the App did not come up on {url}; see {ARTIFACTS / 'app-server.log'}")
            time.sleep(1)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    log.close()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


def image_point(box, x, y, width=640, height=480):
    """Page coordinates of image pixel (x, y) for an image fitted (letterboxed) into `box`."""
    scale = min(box["width"] / width, box["height"] / height)
    left = box["x"] + (box["width"] - width * scale) / 2
    top = box["y"] + (box["height"] - height * scale) / 2
    return left + x * scale, top + y * scale


def sidebar_checkbox(page, field):
    """The visibility checkbox of a label field in the modal's sidebar (the grid's sidebar comes first)."""
    return page.locator(f"[data-cy=sidebar-field-container-{field}]").locator("xpath=..").locator(
        "input[type=checkbox]").last


def mean_difference(png_a: bytes, png_b: bytes) -> float:
    a, b = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) for png in (png_a, png_b))
    return float(np.abs(a - b).mean())


def test_app_shows_pam_masks_and_captions(app_url, page, described):
    regions = described.first().pam.detections
    captions = [d.caption for d in regions]
    page.goto(f"{app_url}/datasets/{DATASET}", wait_until="domcontentloaded")
    page.locator("[data-cy=looker]").first.wait_for(timeout=90_000)
    dismiss = page.get_by_text("Dismiss", exact=True)  # the "Explore Enterprise" popover
    if dismiss.count():
        dismiss.first.click()
    page.get_by_text("pam", exact=True).first.wait_for()
    time.sleep(3)  # let the tile draw its overlays
    page.screenshot(path=str(ARTIFACTS / "app-grid.png"))

    page.locator("[data-cy=looker]").first.click()
    container = page.locator("[data-cy=modal-looker-container]")
    container.wait_for(timeout=60_000)
    time.sleep(3)
    sidebar_checkbox(page, "ground_truth").click(force=True)  # only PAM's labels on the image
    time.sleep(2)
    box = container.bounding_box()
    x, y = image_point(box, 170, 225)  # inside the red rectangle, which the first region was prompted with
    page.mouse.move(x - 5, y - 5)
    page.mouse.move(x, y)
    tooltip = page.locator("[data-cy^=sample-canvas-tooltip]").first
    tooltip.wait_for()
    time.sleep(1)
    page.screenshot(path=str(ARTIFACTS / "app-modal-tooltip.png"))
    text = tooltip.inner_text()
    assert "caption" in text and any(caption in text for caption in captions), text

    # The masks are drawn: hiding the PAM field changes the picture.
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] - 2)
    time.sleep(1)
    with_pam = container.screenshot()
    sidebar_checkbox(page, "pam").click(force=True)
    time.sleep(2)
    without_pam = container.screenshot()
    sidebar_checkbox(page, "pam").click(force=True)
    assert mean_difference(with_pam, without_pam) > 10

    # The panel, split beside the image, lists every region's full texts.
    page.locator("#modal [title='Split horizontally']").first.click()
    panel = page.locator("[data-cy=panel-content-region_texts]")
    panel.get_by_text("Caption:").first.wait_for(timeout=30_000)
    time.sleep(2)
    page.screenshot(path=str(ARTIFACTS / "app-modal-panel.png"))
    shown = panel.inner_text()
    for detection in regions:
        assert f"Caption: {detection.caption}" in shown and detection.label in shown, shown


@needs_ffmpeg
def test_app_shows_pam_video_tracks(app_url, page, described_video):
    """The video sample in the App's modal: its first frame with PAM's tracked mask and box drawn over it."""
    page.goto(f"{app_url}/datasets/{VIDEO_DATASET}", wait_until="domcontentloaded")
    page.locator("[data-cy=looker]").first.wait_for(timeout=90_000)
    dismiss = page.get_by_text("Dismiss", exact=True)
    if dismiss.count():
        dismiss.first.click()
    page.locator("[data-cy=sidebar-field-container-frames\\.pam]").first.wait_for()
    page.locator("[data-cy=looker]").first.click()
    container = page.locator("[data-cy=modal-looker-container]")
    container.wait_for(timeout=60_000)
    time.sleep(5)  # the video's first frame and its frame labels
    sidebar_checkbox(page, "frames\\.gt").click(force=True)  # only PAM's labels on the frame
    time.sleep(2)
    box = container.bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] - 2)  # no tooltip over the picture
    time.sleep(1)
    page.screenshot(path=str(ARTIFACTS / "app-video-modal.png"))
    frame = {key: box[key] for key in ("x", "y", "width", "height")}
    frame["height"] -= 80  # the picture, without the player's controls below it
    with_pam = page.screenshot(clip=frame)
    sidebar_checkbox(page, "frames\\.pam").click(force=True)
    time.sleep(2)
    without_pam = page.screenshot(clip=frame)
    sidebar_checkbox(page, "frames\\.pam").click(force=True)
    difference = mean_difference(with_pam, without_pam)
    assert difference > 5, difference


SEARCH_DATASET = "pam-search-app"
# What PAM might say about the regions of a kitchen, a park and a street; drawn as coloured boxes with their category.
# The truck comes fifth in the dataset's order, so the search visibly moves it to the front.
SEARCH_REGIONS = [
    [("pizza", "a slice of pepperoni pizza on a white plate", (230, 170, 60)),
     ("umbrella", "a green umbrella leaning against the wall", (40, 160, 60))],
    [("person", "a woman jogging along the river path", (60, 90, 200)),
     ("bus", "a yellow school bus waiting at the stop", (240, 210, 40))],
    [("pickup truck", "a red pickup truck parked by the curb", (200, 40, 40)),
     ("cat", "a tabby cat asleep on the doorstep", (150, 110, 60))],
]


@pytest.fixture(scope="module")
def searchable(tmp_path_factory):
    """A persistent dataset whose PAM field holds handcrafted region texts, with its semantic search index."""
    from PIL import ImageDraw

    from fiftyone_plugin import compute_pam_similarity

    folder = tmp_path_factory.mktemp("search-app")
    dataset = fo.Dataset(SEARCH_DATASET, overwrite=True, persistent=True)
    for number, regions in enumerate(SEARCH_REGIONS):
        image = Image.new("RGB", (320, 240), (235, 235, 235))
        draw = ImageDraw.Draw(image)
        detections = []
        for i, (label, caption, color) in enumerate(regions):
            x0, y0, x1, y1 = 20 + 150 * i, 50, 150 + 150 * i, 200
            draw.rectangle((x0, y0, x1, y1), fill=color)
            draw.text((x0 + 8, y0 + 8), label, fill=(255, 255, 255))
            detections.append(fo.Detection(label=label, caption=caption,
                                           bounding_box=[x0 / 320, y0 / 240, (x1 - x0) / 320, (y1 - y0) / 240]))
        image.save(folder / f"scene_{number}.png")
        dataset.add_sample(fo.Sample(filepath=str(folder / f"scene_{number}.png"),
                                     pam=fo.Detections(detections=detections)))
    dataset.info["pam_runs"] = {"pam": {"prompt_field": None, "tasks": ["category", "detailed"], "lang": "en",
                                        "model": "handcrafted"}}
    dataset.save()
    dataset.add_dynamic_sample_fields()
    compute_pam_similarity(dataset, "pam")
    yield dataset
    dataset.delete()


def test_text_query_on_the_patches_view_finds_regions_by_meaning(app_url, page, searchable):
    """The App's own text search (the sort-by-similarity button) on the patches view of the PAM field: the App server
    loads the index's text model by its zoo name and the region captioned 'a red pickup truck' comes first."""
    page.goto(f"{app_url}/datasets/{SEARCH_DATASET}", wait_until="domcontentloaded")
    page.locator("[data-cy=looker]").first.wait_for(timeout=90_000)
    dismiss = page.get_by_text("Dismiss", exact=True)
    if dismiss.count():
        dismiss.first.click()
    page.locator("[data-cy=action-clips-patches]").click()
    page.get_by_text("pam", exact=True).last.click()
    page.get_by_text("6 patches").wait_for(timeout=30_000)
    page.locator("[data-cy=action-sort-by-similarity]").click()
    query = page.get_by_placeholder("Type anything!")
    query.fill("vehicle")
    query.press("Enter")
    # FiftyOne 1.22 runs the query in its Similarity Search panel (the server embeds it with the index's model);
    # opening the finished search shows its regions, best first.
    page.get_by_text("Completed").first.wait_for(timeout=90_000)
    # force: the search card is a drag-and-drop item marked aria-disabled, which playwright reads as a disabled button
    page.locator("[aria-label='Show results']").first.click(force=True)
    page.get_by_text("Showing 6 results").first.wait_for(timeout=60_000)
    page.mouse.move(600, 700)  # no tooltip in the picture
    time.sleep(4)  # the tiles re-render in the new order
    page.screenshot(path=str(ARTIFACTS / "app-semantic-search.png"))  # docs/images/ has a copy

    page.locator("[data-cy=looker]").first.click()  # the best match, in its modal
    container = page.locator("[data-cy=modal-looker-container]")
    container.wait_for(timeout=60_000)
    time.sleep(3)
    box = container.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2 - 5, box["y"] + box["height"] / 2 - 5)
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tooltip = page.locator("[data-cy^=sample-canvas-tooltip]").first
    tooltip.wait_for()
    assert "a red pickup truck parked by the curb" in tooltip.inner_text()
