"""The font overlays write region labels in: Pillow's default font has no Chinese, Japanese or Korean glyphs and
draws each such character as a box ("tofu"), so labels with characters outside ASCII (PAM's `zh` texts) are
written in a CJK font.

Where the font comes from, first found wins: the `cjk` extra's package (`pylopdf-fonts-zh-cn`, Noto Sans SC),
then a system font that fontconfig lists for Chinese or one at a common path (Debian's fonts-noto-cjk and
fonts-wqy-*, macOS, Windows). With none, labels are drawn with the default font and a warning says once how
to get one.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from PIL import ImageFont

log = logging.getLogger(__name__)

LABEL_FONT_SIZE = 14
SYSTEM_CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simsun.ttc",
)
MISSING_FONT_HINT = ("no CJK font found: Chinese, Japanese and Korean characters in overlay labels are drawn as "
                     "boxes; install the `cjk` extra (pip install 'pam-suite[cjk]') or a system CJK font "
                     "(e.g. apt-get install fonts-noto-cjk)")


def label_font(text: str) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The font to write `text` in: Pillow's default font for ASCII, the CJK font for anything else (when one
    exists; it has Latin letters too, so a mixed label is drawn in one font)."""
    if text.isascii():
        return ImageFont.load_default()
    path = cjk_font_path()
    if path is None:
        _warn_missing_font()
        return ImageFont.load_default()
    return _load_font(str(path), LABEL_FONT_SIZE)


@functools.cache
def cjk_font_path() -> Optional[Path]:
    """The file of a font with Chinese glyphs, or None. Looked up once per process."""
    for find in (_package_font, _fontconfig_font, _common_path_font):
        path = find()
        if path is not None and path.is_file():
            return path
    return None


def _package_font() -> Optional[Path]:
    try:
        import pylopdf_fonts_zh_cn
    except ImportError:
        return None
    return Path(pylopdf_fonts_zh_cn.sans_path())


def _fontconfig_font() -> Optional[Path]:
    """A font fontconfig says covers Simplified Chinese (`fc-list :lang=zh-cn`), sans-serif ones first."""
    if shutil.which("fc-list") is None:
        return None
    try:
        listed = subprocess.run(["fc-list", ":lang=zh-cn", "file"], capture_output=True, text=True, timeout=10,
                                check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files = sorted({line.strip().rstrip(":") for line in listed.splitlines() if line.strip()},
                   key=lambda file: ("sans" not in file.lower(), file))
    return Path(files[0]) if files else None


def _common_path_font() -> Optional[Path]:
    return next((Path(file) for file in SYSTEM_CJK_FONTS if Path(file).is_file()), None)


@functools.cache
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@functools.cache
def _warn_missing_font() -> None:
    log.warning(MISSING_FONT_HINT)
