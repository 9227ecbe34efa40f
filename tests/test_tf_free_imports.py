"""Modules that hold no Keras code import without TensorFlow or Keras (seconds saved, and usable
where neither is installed). Each is imported in a fresh interpreter, so nothing imported by
another test hides an import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# the modules that must stay free of TensorFlow and Keras
TF_FREE_MODULES = (
    "mtl",
    "mtl.config",
    "mtl.data.prepare",
    "mtl.reid.evaluate",
    "mtl.reid.protocol",
    "mtl.reid.rerank",
    "mtl.rundir",
    "mtl.scoring",
    "mtl.tasks",
    "mtl.data.relabel",
    "mtl.deliverables",
    "mtl.report.render",
)

CHECK = ("import sys, {module}; "
         "loaded = sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.') "
         "or m == 'keras' or m.startswith('keras.')); "
         "assert not loaded, loaded[:5]")


@pytest.mark.parametrize("module", TF_FREE_MODULES)
def test_module_imports_without_tensorflow_or_keras(module):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", CHECK.format(module=module)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"import {module} loaded TensorFlow or Keras:\n{done.stderr[-2000:]}"


def test_the_check_sees_a_keras_import():
    done = subprocess.run([sys.executable, "-c", CHECK.format(module="mtl.models.layers")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0 and "keras" in done.stderr
