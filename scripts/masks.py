#!/usr/bin/env python
"""``mtl-masks`` from a checkout, installed or not (the command itself is mtl/cli/masks.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mtl, even without installing

# main and parser too: code that loads this file (runpy, importlib) calls them in process
from mtl.cli.masks import entry, main, parser  # noqa: E402,F401

if __name__ == "__main__":
    entry()
