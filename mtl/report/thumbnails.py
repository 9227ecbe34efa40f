"""Small JPEG thumbnails of dataset images, embedded in the page as ``data:`` URIs.

Only downscaled copies are embedded (a pedestrian crop becomes ~2 kB), which is what keeps a
report of a 20,000-image gallery small; callers bound how many thumbnails they ask for.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Iterable

from PIL import Image

THUMB_HEIGHT = 64
THUMB_MAX_WIDTH = 96  # wide product photos are bounded too
JPEG_QUALITY = 80
# the enlarged image a click on a thumbnail shows: full size up to this box (a pedestrian crop
# stays at its own 128 x 64; a product photo is bounded so that the page stays small)
FULL_MAX_HEIGHT = 512
FULL_MAX_WIDTH = 512


def resolve_path(path: str, roots: Iterable[Path]) -> Path | None:
    """The existing file for ``path``: as given if absolute, else under the first root holding it."""
    p = Path(str(path))
    if p.is_absolute():
        return p if p.is_file() else None
    for root in roots:
        candidate = Path(root) / p
        if candidate.is_file():
            return candidate
    return None


def thumbnail_bytes(path: Path, height: int = THUMB_HEIGHT, max_width: int = THUMB_MAX_WIDTH,
                    quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of ``path`` scaled to fit ``max_width`` x ``height`` (never enlarged).

    Args:
        path: an image file PIL can read.
        height: maximal height in pixels.
        max_width: maximal width in pixels.
        quality: JPEG quality (1-95).

    Returns:
        The encoded JPEG.
    """
    with Image.open(path) as im:
        im.draft("RGB", (max_width * 2, height * 2))  # big JPEGs decode at a reduced scale: fast
        im = im.convert("RGB")
        im.thumbnail((max_width, height), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


class Thumbnailer:
    """Turns image paths into ``data:image/jpeg`` URIs, once per path.

    Args:
        roots: folders that relative paths are looked up under, in order.
        height: thumbnail height in pixels.
    """

    def __init__(self, roots: Iterable[Path] = (), height: int = THUMB_HEIGHT):
        self.roots = [Path(r) for r in roots]
        self.height = height
        self._cache: dict[tuple[str, bool], str | None] = {}
        self.missing = 0

    def uri(self, path) -> str | None:
        """Data URI of the thumbnail of ``path``, or ``None`` when the image is missing or unreadable."""
        return self._uri(path, full=False)

    def full_uri(self, path) -> str | None:
        """Data URI of ``path`` at full size (bounded by ``FULL_MAX_HEIGHT`` x ``FULL_MAX_WIDTH``),
        what a click on its thumbnail shows; ``None`` when the image is missing or unreadable."""
        return self._uri(path, full=True)

    def _uri(self, path, full: bool) -> str | None:
        key = (str(path), full)
        if key not in self._cache:
            found = resolve_path(key[0], self.roots) if key[0] and key[0] != "nan" else None
            uri = None
            if found is not None:
                size = (FULL_MAX_HEIGHT, FULL_MAX_WIDTH) if full else (self.height, THUMB_MAX_WIDTH)
                try:
                    uri = "data:image/jpeg;base64," + base64.b64encode(
                        thumbnail_bytes(found, *size)).decode("ascii")
                except (OSError, ValueError, Image.DecompressionBombError):
                    uri = None
            if uri is None and not full:  # counted once, for the thumbnail
                self.missing += 1
            self._cache[key] = uri
        return self._cache[key]
