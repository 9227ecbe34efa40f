"""Progress bars for long steps (tqdm), quiet when output is not a terminal unless asked."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(iterable, total: int | None = None, desc: str = "", min_items: int = 200):
    """Wrap ``iterable`` in a progress bar when it is long enough to be worth one.

    Set ``MTL_PROGRESS=0`` to disable bars (CI logs), ``1`` to force them.
    """
    setting = os.environ.get("MTL_PROGRESS")
    n = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    enabled = setting == "1" or (setting != "0" and (n is None or n >= min_items))
    return tqdm(iterable, total=n, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0)
