"""Which files are images: the one list of extensions every reader of image folders uses."""

from __future__ import annotations

from pathlib import Path

#: Lower-case suffixes of the image files read from folders (Pillow decodes them all).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: str | Path) -> bool:
    """Whether ``path``'s suffix (case-insensitive) is one of :data:`IMAGE_EXTENSIONS`."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


__all__ = ["IMAGE_EXTENSIONS", "is_image_file"]
