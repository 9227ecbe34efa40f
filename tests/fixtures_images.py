"""Helpers to write tiny image fixtures (shared by the source tests)."""

from __future__ import annotations

from pathlib import Path


def write_jpeg(path, size=(8, 4), color=(128, 64, 32)) -> Path:
    """Write a solid-colour RGB JPEG of ``size`` (width, height) at ``path``; create parent folders."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", tuple(size), tuple(color)).save(path, format="JPEG")
    return path


def write_tf_unreadable(path, kind: str = "tiff", size=(8, 4)) -> Path:
    """Write an image Pillow opens but TensorFlow's decoder cannot, under ``path`` (e.g. ``x.jpg``).

    Args:
        kind: ``tiff`` (a TIFF file) or ``bmp1`` (a 1-bit BMP), whatever the file's extension.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", tuple(size), (200, 100, 50))
    if kind == "tiff":
        image.save(path, format="TIFF")
    elif kind == "bmp1":
        image.convert("1").save(path, format="BMP")
    else:
        raise ValueError(f"unknown kind {kind!r}; valid: tiff, bmp1")
    return path


def write_truncated_jpeg(path, keep: int = 200, size=(20, 10)) -> Path:
    """Write a JPEG cut after ``keep`` bytes (its header is intact, its data is not)."""
    path = write_jpeg(path, size=size)
    path.write_bytes(path.read_bytes()[:keep])
    return path
