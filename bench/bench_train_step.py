"""Training step: images/s of the full multi-task model (every Market-1501 attribute + identity with
its embedding and triplet loss) vs the same trunk with a single classification head, same batch.

Both models come from ``mtl.models.builder.build_model`` and are compiled by the engine
(``mtl.engine.compile_model``: masked losses and metrics, AdamW, the schedule); each trains on the
same random batch with ``model.train_on_batch`` (P x K identity labels), after two warm-up steps
(tracing). Timed in turn, ``--repeats`` rounds of ``--steps`` steps, best of each. Target:
multi-task overhead (1 - multi / single) at most 10%, i.e. ratio >= 0.9.

    python bench/bench_train_step.py [--steps 10] [--batch-size 64] [--width 1.0] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

from _common import add_size_args, best, compare, finish, market_specs, rates_in_turn, result

NAME, TITLE = "train_step", "Training step: multi-task vs single head (images/s)"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    add_size_args(p)
    p.add_argument("--trunk", default="resnet_small")
    p.add_argument("--identities", type=int, default=600)
    p.add_argument("--json", help="write the result record here")
    args = p.parse_args(argv)
    start = time.time()

    import numpy as np

    from mtl import engine
    from mtl.models.builder import build_model
    from mtl.reid.heads import EMBEDDING
    from mtl.tasks import IDENTITY

    tasks = market_specs(args.identities)
    single = [t for t in tasks if t.name == "upcolor"]
    rng = np.random.default_rng(0)
    n = args.batch_size
    images = rng.uniform(0, 255, (n, args.height, args.width_px, 3)).astype("float32")
    ids = np.repeat(np.arange(max(2, n // 4)), 4)[:n].astype("int32")  # P x K, K = 4

    def labels_for(specs):
        labels = {}
        for t in specs:
            labels[t.name] = ids if t.kind == IDENTITY else rng.integers(0, t.num_classes, n).astype("int32")
            if t.kind == IDENTITY:
                labels[EMBEDDING] = ids
        return labels

    shape = (args.height, args.width_px, 3)
    steps = {}
    for name, specs in (("multi", tasks), ("single", single)):
        model = build_model(specs, input_shape=shape, trunk=args.trunk, width=args.width)
        engine.compile_model(model, specs, engine.TrainArgs(epochs=1), steps_per_epoch=args.steps)
        labels = labels_for(specs)
        for _ in range(2):  # tracing
            model.train_on_batch(images, labels)
        steps[name] = (lambda m=model, y=labels: [m.train_on_batch(images, y) for _ in range(args.steps)])
        steps[name + "_outputs"] = len(model.outputs)
    record = result(NAME, TITLE, details={"batch_size": n, "steps": args.steps, "trunk": args.trunk,
                                          "width": args.width, "size": [args.height, args.width_px],
                                          "multi_tasks": [t.name for t in tasks], "single_task": "upcolor",
                                          "multi_outputs": steps.pop("multi_outputs"),
                                          "single_outputs": steps.pop("single_outputs")})
    rates = rates_in_turn({"single": steps["single"], "multi": steps["multi"]}, args.steps * n, args.repeats)
    record["details"]["rates"] = rates
    compare(record, ("same trunk, one head (upcolor)", best(rates, "single")),
            (f"{len(tasks) - 1} attributes + identity (embedding, triplet)", best(rates, "multi")), "images/s",
            target=0.9, target_text="overhead <= 10% (ratio >= 0.9)")
    cpu = best(rates, "multi", "cpu") / best(rates, "single", "cpu")
    record["notes"] = [f"multi-task overhead {100 * (1 - record['ratio']):.1f}% wall, {100 * (1 - cpu):.1f}% "
                       "per CPU second"]
    print(record["notes"][0])
    return finish(record, start, args.json)


if __name__ == "__main__":
    main()
