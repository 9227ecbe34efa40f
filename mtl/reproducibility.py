"""Seeding and deterministic TensorFlow ops: what makes two runs of one config give one result.

A training run draws random numbers in four places: Python's ``random``, NumPy's global
generator, TensorFlow's global seed (``tf.random`` ops without their own seed, ``tf.data``
shuffles) and Keras's seed generator (weight initialisers, dropout). ``seed_everything`` seeds
them all from ``train.seed``. The input pipeline itself draws its augmentation with stateless
random ops keyed by ``(seed, element)`` (``mtl.data.pipeline``, ``mtl.data.sampler``), so it
does not depend on which thread of a parallel ``map`` runs an element first.

Seeds alone leave one source: ops whose floating-point sums depend on thread timing (most of
them on GPUs, a few on CPUs). ``deterministic=True`` makes TensorFlow pick deterministic
kernels. See ``docs/reproducibility.md`` for what is, and is not, reproducible.
"""

from __future__ import annotations


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every random generator a run uses; optionally make TensorFlow's ops deterministic.

    Call it once at the top of a run, before any dataset, model or ``tf.function`` is built:
    ops and datasets built earlier keep the seeds (and kernels) they were built with.

    With ``deterministic``, ``tf.config.experimental.enable_op_determinism()`` is switched on
    for the rest of the process. What it costs:

    * ops that have a deterministic implementation use it (on GPUs, slower reductions and
      cuDNN algorithms; on CPUs little changes: no cost was measurable on our tiny CPU run,
      see ``docs/reproducibility.md``);
    * ops without one raise ``UnimplementedError`` instead of running nondeterministically;
    * ``tf.data``: every ``map``/``interleave`` keeps its input order, and a ``map`` whose
      function holds stateful random ops runs serially (our pipeline uses stateless ones, so
      its maps stay parallel);
    * random ops without a seed raise an error (the global seed set here prevents that).

    TensorFlow has no public way to switch it off again: with ``deterministic=False`` the
    setting is left as it is (off, unless an earlier call or ``TF_DETERMINISTIC_OPS=1`` set it).

    Args:
        seed: the run's seed (``train.seed``); the same seed gives the same initial weights,
            shuffles, augmentation and dropout masks.
        deterministic: ``train.deterministic``.
    """
    import keras
    import tensorflow as tf

    # seeds Python's ``random``, NumPy's global generator, TensorFlow's global seed and Keras's
    # global SeedGenerator (initialisers, dropout) in one call
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
