"""Lists of image files to predict on, from what a user names: files, folders, or text files of paths.

No TensorFlow here, and nothing is opened: whether a file decodes is the pipeline's question
(``mtl.data.pipeline.drop_unreadable``), asked where the images are read.

Rules (``list_images``):

* a folder is searched recursively for files whose extension is one of ``IMAGE_SUFFIXES``
  (case-insensitive), in sorted order of their path; names starting with ``.`` (hidden files and
  folders, macOS ``._x.jpg`` resource forks) are left out;
* a file whose name ends with ``.txt`` is a list of paths, one per line; blank lines and lines
  starting with ``#`` are ignored, and a relative path is taken relative to the list file's
  folder (so a list travels with its images). Listed paths are not checked here: one that does
  not exist is skipped and named later, like an image that does not decode;
* any other file is taken as an image, whatever its extension (it was named explicitly);
* the same file named twice is listed once, where it first appears.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from mtl.errors import DataError

# the formats the pipeline's decoder reads (tf.io.decode_image: JPEG, PNG, BMP, GIF)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
LIST_SUFFIX = ".txt"


def is_image_name(name: str) -> bool:
    """Whether a file name has one of ``IMAGE_SUFFIXES`` (case-insensitive)."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def images_in_folder(folder: str | Path) -> Iterator[str]:
    """Image files under ``folder``, recursively, in sorted order (hidden names left out).

    Symbolic links to files are listed; links to folders are not followed (no cycles).
    """
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and is_image_name(name):
                yield os.path.join(current, name)


def paths_in_list(list_file: str | Path) -> Iterator[str]:
    """The paths of a text file, one per line (see the module docstring for the rules).

    Raises:
        DataError: the file cannot be read as text.
    """
    list_file = Path(list_file)
    base = list_file.parent
    try:
        with open(list_file, encoding="utf-8-sig") as handle:
            for line in handle:
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                yield entry if os.path.isabs(entry) else os.path.join(base, entry)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the list of images {list_file}: {e}") from None


def list_images(sources: str | Path | Sequence[str | Path]) -> list[str]:
    """Image paths from files, folders (recursive) and ``.txt`` lists of paths, in the order given.

    Args:
        sources: one or more paths (see the module docstring for how each kind is read).

    Returns:
        The image paths (as given or found, not resolved), each once, in order.

    Raises:
        DataError: a named path does not exist, or no image is found at all (names the sources).
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    seen: set[str] = set()
    out: list[str] = []
    for source in sources:
        for path in _expand(Path(source)):
            key = os.path.normpath(os.path.abspath(path))
            if key not in seen:
                seen.add(key)
                out.append(str(path))
    if not out:
        names = ", ".join(map(str, sources)) or "(nothing given)"
        raise DataError(f"no images found in {names} (looked for files ending in {', '.join(IMAGE_SUFFIXES)}, "
                        f"recursively in folders, or listed in {LIST_SUFFIX} files)")
    return out


def _expand(source: Path) -> Iterable[str]:
    if source.is_dir():
        return images_in_folder(source)
    if source.is_file():
        return paths_in_list(source) if source.suffix.lower() == LIST_SUFFIX else [str(source)]
    raise DataError(f"image path not found: {source} (give image files, folders or {LIST_SUFFIX} lists of paths)")
