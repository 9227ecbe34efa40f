"""Run code around the first import of a module, once (standard library only: no TensorFlow here).

Two things must happen when a heavy dependency is first imported, wherever that import happens:
``import mtl`` registers its Keras objects right after Keras loads (so a plain
``keras.saving.load_model`` finds them), and a command imports TensorFlow with its start-up noise
filtered from stderr. Both use ``on_first_import``: a finder placed first on ``sys.meta_path``
finds the module through the other finders and wraps its loader; it leaves ``sys.meta_path`` when
the module starts loading, not when it is found, because ``importlib.util.find_spec`` (which
TensorFlow and Keras call on each other) finds a module without importing it.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Callable

Around = Callable[[Callable[[], None]], None]


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, around: Around):
        self.name = name
        self.around = around

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None  # not installed: the usual ModuleNotFoundError follows
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, self)
        return spec


class _Loader(importlib.abc.Loader):
    """The module's own loader, run inside ``around``."""

    def __init__(self, loader, finder: _Finder):
        self.loader = loader
        self.finder = finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader  # the module keeps its own loader
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self.finder]
        self.finder.around(lambda: self.loader.exec_module(module))


def on_first_import(name: str, around: Around) -> None:
    """Have ``around(load)`` run in place of the first import of the top-level module ``name``.

    Args:
        name: a top-level module (``"keras"``, ``"tensorflow"``) not imported yet.
        around: called with ``load``, which runs the module's own ``__init__``; it must call it
            once (and may do things before and after).

    Installing the same ``around`` for ``name`` twice does nothing.
    """
    if not any(isinstance(f, _Finder) and f.name == name and f.around == around for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder(name, around))


def pending(name: str) -> bool:
    """Whether a hook for ``name`` waits for its first import."""
    return any(isinstance(f, _Finder) and f.name == name for f in sys.meta_path)
