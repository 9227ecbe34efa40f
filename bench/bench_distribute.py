"""Distribution: images/s of ``train.distribute=mirrored`` over two logical CPUs vs one device, same
global batch, through the engine (``mtl.engine.strategy_for``, ``compile_model``, ``model.fit`` of
``--steps`` steps on a repeated random batch). On a 2-core machine this measures the overhead of
the strategy (two replicas share the same cores), not a speed-up. Multi-worker training
(``train.distribute=multiworker``) is measured when the engine offers it; otherwise reported missing.

    python bench/bench_distribute.py [--steps 10] [--batch-size 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

from _common import add_size_args, best, compare, finish, market_specs, rates_in_turn, result

NAME, TITLE = "distribution", "Distribution: mirrored over 2 logical CPUs vs one device (images/s)"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    add_size_args(p)
    p.add_argument("--json", help="write the result record here")
    args = p.parse_args(argv)
    start = time.time()

    import numpy as np
    import tensorflow as tf

    # two logical CPUs: before anything initialises the runtime
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from mtl import engine
    from mtl.choices import DISTRIBUTE

    tasks = [t for t in market_specs() if t.kind != "identity"]
    n = args.batch_size
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (n, args.height, args.width_px, 3)).astype("float32")
    labels = {t.name: rng.integers(0, t.num_classes, n).astype("int32") for t in tasks}
    ds = tf.data.Dataset.from_tensors((images, labels)).repeat()

    def trainer(strategy):
        from mtl.models.builder import build_model

        with strategy.scope():
            model = build_model(tasks, input_shape=(args.height, args.width_px, 3), width=args.width)
            engine.compile_model(model, tasks, engine.TrainArgs(epochs=1), steps_per_epoch=args.steps)
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)  # tracing
        return lambda: model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    runs = {"one device": trainer(tf.distribute.get_strategy()), "mirrored 2 CPUs": trainer(mirrored)}
    notes = ["2-core machine: both logical CPUs share the same cores, so this is the strategy's overhead, not a "
             "speed-up (on GPUs each replica has its own device)"]
    if "multiworker" in DISTRIBUTE:
        notes.append("train.distribute=multiworker exists but is not measured here yet (two worker processes)")
    else:
        notes.append("multi-worker: train.distribute=multiworker is not in the package yet (mtl.choices.DISTRIBUTE = "
                     f"{', '.join(DISTRIBUTE)}): not measured")
    record = result(NAME, TITLE, details={"global_batch": n, "steps": args.steps, "replicas": 2,
                                          "tasks": [t.name for t in tasks]}, notes=notes)
    rates = rates_in_turn(runs, args.steps * n, args.repeats)
    record["details"]["rates"] = rates
    compare(record, ("one device", best(rates, "one device")), ("mirrored, 2 logical CPUs", best(rates, "mirrored 2 CPUs")),
            "images/s")
    print("\n".join(notes))
    return finish(record, start, args.json)


if __name__ == "__main__":
    main()
