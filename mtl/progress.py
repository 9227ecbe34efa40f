"""Progress bars for long steps (tqdm), on a terminal only: a log written to a file stays clean.

``MTL_PROGRESS=0`` turns every bar off (CI logs), ``MTL_PROGRESS=1`` forces them on (even into a file).
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def bars_enabled(stream=None) -> bool:
    """Whether live progress bars go to ``stream`` (default stderr): ``MTL_PROGRESS`` when set
    (``1`` on, ``0`` off), else only when the stream is a terminal."""
    setting = os.environ.get("MTL_PROGRESS")
    if setting in ("0", "1"):
        return setting == "1"
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress(iterable, total: int | None = None, desc: str = "", min_items: int = 200):
    """Wrap ``iterable`` in a progress bar (on stderr) when it is long enough to be worth one.

    Args:
        iterable: what to iterate over.
        total: its length, when ``len`` cannot tell (a ``tf.data`` dataset).
        desc: the bar's label.
        min_items: shorter iterables get no bar (unless ``MTL_PROGRESS=1``).

    Returns:
        A tqdm iterator, disabled (no output at all) off a terminal (see :func:`bars_enabled`).
    """
    forced = os.environ.get("MTL_PROGRESS") == "1"
    n = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    enabled = bars_enabled(sys.stderr) and (forced or n is None or n >= min_items)
    return tqdm(iterable, total=n, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0, leave=False)
