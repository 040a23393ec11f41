"""Odd and hostile image, mask and video files: each loads as it should or fails with one clear error naming it."""

import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, features

from pam_core.errors import ImageError, PromptError, VideoError
from pam_core.io import PIXEL_LIMIT_ENV, load_image, load_mask
from pam_core.rle import mask_to_rle, rle_to_mask

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # Pillow on odd files


@pytest.fixture(autouse=True)
def pillow_limit(monkeypatch):
    """PAM_MAX_IMAGE_PIXELS also sets Pillow's limit: put it back after each test."""
    monkeypatch.delenv(PIXEL_LIMIT_ENV, raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def _checked_load(path):
    """load_image's result, checked to be what the reference's `Image.open(path).convert("RGB")` gives."""
    image = load_image(path)
    assert image.mode == "RGB"
    with Image.open(path) as reference:
        reference.load()  # some formats (ICNS) settle their mode and size only when decoded
        assert image.size == reference.size  # no EXIF transpose, no resize
        if reference.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit is scaled here, clipped there
            assert np.array_equal(np.asarray(image), np.asarray(reference.convert("RGB")))
    return image


# --- decompression bombs and the pixel limit ---------------------------------------------------------------


def test_a_decompression_bomb_header_is_an_image_error(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(50_000, 50_000))
    with pytest.raises(ImageError, match=f"{bomb}.* more than 89478485 pixels.*set {PIXEL_LIMIT_ENV}"):
        load_image(bomb)
    with pytest.raises(PromptError, match=f"mask {bomb}.*{PIXEL_LIMIT_ENV}"):
        load_mask(bomb)


def test_pam_describe_on_a_bomb_says_so_without_a_traceback(tmp_path, capsys):
    from pam_core.cli import main

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(50_000, 50_000))
    assert main(["describe", str(bomb), "--box", "0,0,5,5", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert PIXEL_LIMIT_ENV in err and str(bomb) in err and "Traceback" not in err


def test_the_pixel_limit_can_be_raised_lowered_or_lifted(tmp_path, monkeypatch):
    path = tmp_path / "15x10.png"
    Image.new("RGB", (15, 10), (1, 2, 3)).save(path)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "100")
    with pytest.raises(ImageError, match="more than 100 pixels"):  # Pillow only warns up to twice its limit
        load_image(path)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "150")
    assert load_image(path).size == (15, 10)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "none")
    assert load_image(path).size == (15, 10)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(50_000, 50_000))
    with pytest.raises(ImageError, match=f"cannot read image {bomb}"):  # no limit: it fails on its missing data
        load_image(bomb)
    for bad in ("many", "0", "-5", "1e9"):
        monkeypatch.setenv(PIXEL_LIMIT_ENV, bad)
        with pytest.raises(ImageError, match=f"{PIXEL_LIMIT_ENV} must be a positive number of pixels or 'none'"):
            load_image(path)


def test_the_pixel_limit_bounds_rle_masks_too(monkeypatch):
    mask = np.ones((20, 20), dtype=bool)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "100")
    with pytest.raises(PromptError, match=f"20x20 mask has more than 100 pixels.*{PIXEL_LIMIT_ENV}"):
        rle_to_mask(mask_to_rle(mask))
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "400")
    assert rle_to_mask(mask_to_rle(mask)).all()


# --- a corpus of odd images --------------------------------------------------------------------------------

def _pattern(mode: str, size=(23, 17)) -> Image.Image:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return rgb.convert(mode)


def _writable():
    """(format, mode) pairs this Pillow can write, one image each."""
    Image.init()
    for fmt in sorted(Image.SAVE):
        for mode in ("RGB", "L", "P", "1", "RGBA", "LA", "CMYK", "I;16"):
            try:
                _pattern(mode).save(io.BytesIO(), fmt)
            except Exception:  # this format cannot hold this mode
                continue
            yield fmt, mode


WRITABLE = list(_writable())


@pytest.mark.parametrize("fmt, mode", WRITABLE, ids=[f"{f}-{m}" for f, m in WRITABLE])
def test_every_format_pillow_writes_loads_as_the_reference_does_or_fails_clearly(tmp_path, fmt, mode):
    path = tmp_path / f"image.{fmt.lower()}"
    _pattern(mode).save(path, fmt)
    try:
        _checked_load(path)
    except ImageError as exc:  # e.g. PDF and EPS (no Ghostscript) are written but not read
        assert str(path) in str(exc)


@pytest.mark.parametrize("fmt, mode", WRITABLE, ids=[f"{f}-{m}" for f, m in WRITABLE])
def test_damaged_files_load_or_fail_clearly(tmp_path, fmt, mode):
    buffer = io.BytesIO()
    _pattern(mode).save(buffer, fmt)
    data, rng = buffer.getvalue(), random.Random(f"{fmt}-{mode}")
    for trial in range(12):  # cut short, or a few bytes overwritten
        damaged = bytearray(data[:rng.randrange(len(data))] if trial % 3 == 0 else data)
        for _ in range(0 if trial % 3 == 0 else rng.randint(1, 6)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path = tmp_path / f"damaged{trial}.{fmt.lower()}"
        path.write_bytes(bytes(damaged))
        try:
            _checked_load(path)
        except ImageError as exc:
            assert str(path) in str(exc)


def _exif_rotated_jpeg(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    _pattern("RGB", (40, 20)).save(path, "JPEG", exif=exif)


def _write(image, fmt, **options):
    return lambda path: image.save(path, fmt, **options)


def _palette_with_transparency(path):
    image = _pattern("P")
    image.info["transparency"] = 0
    image.save(path, "PNG", transparency=0)


ODD_IMAGES = {  # name: (writer, expected size or None when it must fail)
    "exif-rotated.jpg": (_exif_rotated_jpeg, (40, 20)),  # not transposed, as in the reference
    "cmyk.jpg": (_write(_pattern("CMYK"), "JPEG"), (23, 17)),
    "cmyk.tif": (_write(_pattern("CMYK"), "TIFF"), (23, 17)),
    "16bit.png": (_write(Image.fromarray(np.arange(391, dtype=np.uint16).reshape(17, 23) * 160), "PNG"), (23, 17)),
    "16bit.tif": (_write(Image.fromarray(np.arange(391, dtype=np.uint16).reshape(17, 23) * 160), "TIFF"), (23, 17)),
    "1x1.png": (_write(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"), (1, 1)),
    "1x1.gif": (_write(Image.new("P", (1, 1)), "GIF"), (1, 1)),
    "palette-transparent.png": (_palette_with_transparency, (23, 17)),
    "la.png": (_write(_pattern("LA"), "PNG"), (23, 17)),
    "rgba.webp": (_write(_pattern("RGBA"), "WEBP", lossless=True), (23, 17)),
    "icon.ico": (_write(_pattern("RGBA", (32, 32)), "ICO", sizes=[(32, 32)]), (32, 32)),
    "png-named.jpg": (_write(_pattern("RGB"), "PNG"), (23, 17)),  # the content decides, not the extension
    "jpeg-named.png": (_write(_pattern("RGB"), "JPEG"), (23, 17)),
    "empty.png": (lambda path: path.write_bytes(b""), None),
    "text.jpg": (lambda path: path.write_text("this is not a picture\n"), None),
    "truncated.png": (lambda path: path.write_bytes(_encoded(_pattern("RGB"), "PNG")[:200]), None),
    "truncated.jpg": (lambda path: path.write_bytes(_encoded(_pattern("RGB", (64, 64)), "JPEG")[:400]), None),
    "truncated.tif": (lambda path: path.write_bytes(_encoded(_pattern("RGB"), "TIFF")[:300]), None),
    "bomb.png": (lambda path: path.write_bytes(_png_claiming(40_000, 40_000)), None),
    "bomb.gif": (lambda path: path.write_bytes(b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00;"), None),
}


def _encoded(image, fmt) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_odd_images_load_at_their_size_or_fail_naming_the_file(tmp_path, name):
    write, size = ODD_IMAGES[name]
    if name.endswith(".webp") and not features.check("webp"):
        pytest.skip("this Pillow has no WebP")
    path = tmp_path / name
    write(path)
    if size is None:
        with pytest.raises(ImageError, match=f"{path}"):
            load_image(path)
    else:
        assert _checked_load(path).size == size


def test_a_mask_file_that_is_no_image_is_a_prompt_error(tmp_path):
    path = tmp_path / "mask.png"
    path.write_text("not a mask")
    with pytest.raises(PromptError, match=f"cannot read mask {path}"):
        load_mask(path)


# --- video files -------------------------------------------------------------------------------------------


def _video(path, metadata=None):
    av = pytest.importorskip("av")
    with av.open(str(path), "w", format="matroska") as container:
        container.metadata.update(metadata or {})
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for value in (0, 100, 200):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), value, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_video_with_a_non_utf8_tag_still_opens(tmp_path):
    from pam_core.video import open_video

    path = tmp_path / "tagged.mkv"
    _video(path, {"title": "TITLE-XYZ"})
    path.write_bytes(path.read_bytes().replace(b"TITLE-XYZ", b"TITLE\xff\xfe\xfd\xfc"))  # e.g. a Latin-1 title
    video = open_video(path)
    assert video.info.num_frames == 3 and len(list(video.frames())) == 3


@pytest.mark.parametrize("damage", ["empty", "text", "cut", "scrambled"])
def test_a_broken_video_is_a_video_error_naming_it(tmp_path, damage):
    from pam_core.video import open_video

    good = tmp_path / "good.mkv"
    _video(good)
    data = good.read_bytes()
    broken = {"empty": b"", "text": b"not a video\n", "cut": data[:300],
              "scrambled": data[:64] + bytes(random.Random(0).randrange(256) for _ in range(len(data) - 64))}[damage]
    path = tmp_path / f"{damage}.mkv"
    path.write_bytes(broken)
    try:
        list(open_video(path).frames())
    except VideoError as exc:
        assert str(path) in str(exc)
