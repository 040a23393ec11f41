"""Reading images and masks from what users hand us, and writing results that are never half-complete."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TypeVar, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from .errors import ImageError, PAMError, PromptError
from .fonts import label_font

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]
PIXEL_LIMIT_ENV = "PAM_MAX_IMAGE_PIXELS"
T = TypeVar("T")


def load_image(source: ImageLike) -> Image.Image:
    """An 8-bit RGB PIL image from a path, PIL image, array or tensor.

    Accepted: RGB, RGBA (alpha dropped, as the reference's `.convert("RGB")`), grayscale, palette,
    16-bit (scaled to 8 bit), float arrays in [0, 1]; arrays HxW, HxWxC, tensors HxWxC or CxHxW.
    An EXIF orientation is not applied, as in the reference (`Image.open(...).convert("RGB")`).
    """
    if isinstance(source, (str, os.PathLike)):
        return _decode_file(Path(source), "image", ImageError, _pil_to_rgb)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source)
    if isinstance(source, torch.Tensor):
        source = _tensor_to_hwc(source)
    if isinstance(source, np.ndarray):
        return Image.fromarray(_array_to_uint8_rgb(source))
    raise ImageError(f"unsupported image type {type(source).__name__}; pass a path, PIL image, numpy array or tensor")


def max_image_pixels() -> Optional[int]:
    """The most pixels an image or mask may have: $PAM_MAX_IMAGE_PIXELS (an integer, or "none" for no limit),
    else Pillow's `Image.MAX_IMAGE_PIXELS`. A guard against decompression bombs: a small file whose header
    declares a huge image. When set, the variable also becomes Pillow's limit, which its decoders check."""
    raw = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if raw:
        try:
            limit = None if raw.lower() == "none" else int(raw)
        except ValueError:
            limit = 0
        if limit is not None and limit < 1:
            raise ImageError(f"{PIXEL_LIMIT_ENV} must be a positive number of pixels or 'none', got {raw!r}")
        Image.MAX_IMAGE_PIXELS = limit
    return Image.MAX_IMAGE_PIXELS


def _decode_file(path: Path, what: str, error: type[PAMError], convert: Callable[[Image.Image], T]) -> T:
    """The image file at `path` decoded by Pillow and `convert`ed; every way the file can fail raises `error`."""
    if not path.is_file():
        raise error(f"{what} file not found: {path}")
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit is refused, not warned
            with Image.open(path) as img:
                img.load()  # decode now, so a truncated file fails here and not halfway through a run
                return convert(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise error(f"{what} {path} has more than {limit} pixels, the limit that guards against decompression "
                    f"bombs; set {PIXEL_LIMIT_ENV} to a larger number of pixels, or to 'none', to open it") from exc
    except Exception as exc:  # Pillow's decoders raise nearly any type on hostile files (fuzzing found OSError,
        # ValueError, SyntaxError, RuntimeError, NotImplementedError, AttributeError, ...)
        raise error(f"cannot read {what} {path}: {exc}") from exc


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_array_to_uint8_rgb(np.asarray(img)))
    return img.convert("RGB")


def _tensor_to_hwc(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().cpu()
    if array.dtype in (torch.bfloat16, torch.float16):
        array = array.float()
    array = array.numpy()
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CxHxW (torchvision) -> HxWxC
    return array


def _array_to_uint8_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"image array is empty: shape {array.shape}")
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255):
        array = np.round(array.astype(np.float64) / 65535.0 * 255.0).clip(0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("image array contains NaN or infinite values")
        array = np.round(array.astype(np.float64).clip(0.0, 1.0) * 255.0).astype(np.uint8)
    elif array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.uint8) * (255 if array.dtype == np.bool_ else 1)
    else:
        raise ImageError(f"unsupported image dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def load_mask(source: Union[str, os.PathLike, np.ndarray, torch.Tensor, Image.Image]) -> np.ndarray:
    """A boolean HxW mask from a PNG path (any non-zero pixel is inside), array or tensor."""
    if isinstance(source, (str, os.PathLike)):
        source = _decode_file(Path(source), "mask", PromptError, _mask_values)
    elif isinstance(source, Image.Image):
        source = np.asarray(source.convert("L"))
    elif isinstance(source, torch.Tensor):
        source = source.detach().cpu().float().numpy()
    try:
        mask = np.asarray(source)
    except ValueError:  # nested lists of different lengths
        raise PromptError("a mask must be a rectangular array (HxW), got rows of different lengths") from None
    if mask.dtype.kind not in "biuf":
        raise PromptError(f"a mask must hold booleans or numbers, got {mask.dtype} values")
    mask = np.squeeze(mask) if mask.ndim > 2 else mask
    if mask.ndim != 2:
        raise PromptError(f"a mask must be 2-D (HxW), got shape {np.asarray(source).shape}")
    return mask > (0.5 if np.issubdtype(mask.dtype, np.floating) else 0)


def _mask_values(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L") if img.mode not in ("1", "L", "I;16", "I") else img)


def mask_to_png(mask: np.ndarray) -> Image.Image:
    """A binary mask as an 8-bit PNG image (0 outside, 255 inside)."""
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")


_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128)]


OverlayRegion = tuple[np.ndarray, Optional[tuple[float, float, float, float]], str]  # mask, xyxy box, label


def draw_overlay(image: Image.Image, regions: Iterable[OverlayRegion]) -> Image.Image:
    """The image with each region's mask tinted, its box outlined and its label written at the box (in a CJK
    font when the label needs one, see `pam_core.fonts`)."""
    canvas = np.asarray(image.convert("RGB")).astype(np.float32)
    labels = []
    for index, (mask, box, label) in enumerate(regions):
        color = np.array(_PALETTE[index % len(_PALETTE)], dtype=np.float32)
        canvas[mask] = canvas[mask] * 0.5 + color * 0.5
        labels.append((box, label, tuple(int(c) for c in color)))
    out = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for box, label, color in labels:
        if box is None:
            continue
        draw.rectangle(box, outline=color, width=2)
        text = label if len(label) <= 60 else label[:57] + "..."
        font = label_font(text)
        _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
        x, y = box[0], max(0, box[1] - (bottom - top) - 2)
        text_box = draw.textbbox((x, y), text, font=font)
        draw.rectangle(text_box, fill=color)
        draw.text((x, y), text, fill=(255, 255, 255), font=font)
    return out


def write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see a partial file. The
    file gets the permissions a plain `open` would give it (mkstemp makes it private to its owner)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    def _write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=2)
            fh.write("\n")

    write_atomic(path, _write)


def save_png(path: Path, image: Image.Image) -> None:
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
