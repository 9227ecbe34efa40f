"""Memory between trainings in one process (tuning trials, the runs of a study): what a trained
model leaves in TensorFlow's global state is released, and resident memory is measured."""

from __future__ import annotations

import gc
from pathlib import Path

import keras

def rss_mb() -> float:
    """Resident memory of this process in MB (``/proc/self/status``; peak RSS where absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

def _gradient_registry() -> dict | None:
    try:
        from tensorflow.python.framework import ops as tf_ops

        return tf_ops.gradient_registry._registry
    except (ImportError, AttributeError):  # another backend, or TensorFlow changed: nothing to prune
        return None


def gradient_registry_mark() -> set:
    """The custom-gradient entries registered so far (see ``release_graph_memory``)."""
    registry = _gradient_registry()
    return set(registry) if registry is not None else set()


def release_graph_memory(keep: set | None = None) -> None:
    """Free what the models trained since ``keep = gradient_registry_mark()`` left behind.

    Why: Keras 3's TensorFlow optimizer all-reduces gradients even with one replica, through a
    ``tf.custom_gradient``; traced, that registers a gradient function in TensorFlow's global
    registry which holds the whole traced train step (25-70 MB for a small trunk) for the life of
    the process. Between trainings nothing is being traced, so these entries are dead and
    dropping them frees the graphs. Then the Keras session is cleared, garbage collected, and
    freed heap pages go back to the system (glibc), so that resident memory measures what is used.
    """
    keras.backend.clear_session()
    registry = _gradient_registry()
    if registry is not None:
        for key in [k for k in registry if k.startswith("CustomGradient-") and k not in (keep or set())]:
            del registry[key]
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
