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
