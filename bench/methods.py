"""The methods comparison of ``docs/methods.md``: each option against the recipe without it, on real data.

Every variant is the Market CPU recipe (``configs/market1501_cpu.yaml``: EfficientNet-Lite0,
ImageNet weights, all attributes + identity, 100 held-out identities) on the same shortened
schedule (``SCHEDULE``: the same for every variant), plus the variant's ``--set`` options. Each
run is an ordinary ``mtl-train`` process into ``<out>/<variant>-s<seed>``; a finished run is
reused, so the comparison can be extended one variant at a time. The figures are read back from
each run's ``metrics.json``: mean attribute accuracy, mA and instance-based F1 (``summary``),
rank-1 and mAP of the held-out re-identification, the variable-length retrieval and the training time.

    python bench/methods.py --data ../shared/data/market1501-course --only baseline,gem --seeds 0
    python bench/methods.py --data ../shared/data/market1501-course --table-only --write docs/methods.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "market1501_cpu.yaml"
# the shortened schedule shared by every variant: 128 x 64 input (the crops' own size), 4 epochs of
# 50 P x K batches (the first with the trunk frozen, as the recipe does); about a third of an epoch
# of the full recipe each, so that a dozen variants fit in a working session on 2 CPU cores
SCHEDULE = ["data.image_height=128", "data.image_width=64", "train.epochs=4", "train.steps_per_epoch=50"]

# variant -> (what it is, the report that introduced it, its --set options)
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "baseline": ("the recipe as it is (shortened schedule)", "-", []),
    "attention": ("CBAM after the trunk's last two stages", "001", ["model.attention=stage6,last"]),
    "camera_junk": ("auxiliary camera task + junk class (10% zoomed crops), junk gallery images dropped",
                    "003", ["tasks=all,identity,camera", "data.junk_fraction=0.1"]),
    "positive_weights": ("binary attributes weighted by label frequency", "001", ["train.class_weighting=positive"]),
    "confusion_weights": ("class weights from each epoch's training recall", "003",
                          ["train.class_weighting=confusion"]),
    "contrastive": ("contrastive loss on the embedding, hardest negatives", "002", ["train.metric_loss=contrastive"]),
    "centroid_triplet": ("centroid triplet loss on the embedding", "003", ["train.metric_loss=centroid_triplet"]),
    "lr_halving": ("step schedule halving the rate every epoch", "001, 003",
                   ["train.schedule=step", "train.step_epochs=1", "train.step_factor=0.5"]),
    "adamw_sgd": ("AdamW, then SGD from epoch 3", "003", ["train.sgd_from_epoch=3"]),
    "uncertainty": ("uncertainty loss weighting (Kendall et al. 2018)", "-", ["train.loss_balancing=uncertainty"]),
    "dwa": ("dynamic weight averaging (Liu et al. 2019)", "-", ["train.loss_balancing=dwa"]),
    "gem": ("GeM pooling (p learnt, from 3)", "BoT-style baselines", ["model.pooling=gem"]),
    "last_stride1": ("last stride 1 in the trunk", "BoT", ["model.last_stride=1"]),
    "person_mask": ("person mask (mtl-masks) as a 4th input channel", "003",
                    ["data.person_mask=runs/masks/market1501-course"]),
    "combined": ("last stride 1 + GeM + centroid triplet loss", "-",
                 ["model.last_stride=1", "model.pooling=gem", "train.metric_loss=centroid_triplet"]),
}
START, END = "<!-- methods-table:start -->", "<!-- methods-table:end -->"


def run_variant(name: str, seed: int, data: str, out: Path, log) -> Path:
    """Train one variant (unless its run is finished) and return its run folder."""
    run = out / f"{name}-s{seed}"
    if (run / "metrics.json").is_file():
        return run
    sets = SCHEDULE + VARIANTS[name][2] + [f"train.seed={seed}"]
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--data", data, "--config", str(RECIPE),
               "--out", str(run)] + [arg for s in sets for arg in ("--set", s)]
    log(f"[{name} seed {seed}] {shlex.join(command)}")
    start = time.perf_counter()
    subprocess.run(command, check=True)
    log(f"[{name} seed {seed}] done in {time.perf_counter() - start:.0f} s")
    return run


def figures(run: Path) -> dict:
    """The comparison's figures of one finished run (its ``metrics.json``)."""
    metrics = json.loads((run / "metrics.json").read_text())
    summary = metrics.get("summary") or {}
    row = {k: summary.get(k) for k in ("mean_accuracy", "mA", "instance_f1")}
    reid = metrics.get("reid") or {}
    plain = reid.get("plain") or {}
    row["rank1"], row["mAP"] = plain.get("rank1"), plain.get("mAP")
    row["junk_dropped"] = reid.get("junk_dropped")
    row["threshold"] = reid.get("threshold")
    row["train_min"] = ((metrics.get("training") or {}).get("train_time_s") or 0) / 60
    return row


def table(rows: list[dict]) -> str:
    """The markdown table: one row per variant (mean over its seeds) and its delta against the
    baseline, over the seeds both have (a variant run with seed 0 only is compared with the
    baseline's seed 0, not with the mean of its seeds)."""
    import numpy as np

    keys = ["mean_accuracy", "mA", "instance_f1", "rank1", "mAP"]
    base = next((r for r in rows if r["variant"] == "baseline"), None)
    head = "| variant | report | seeds | mean acc | mA | instance F1 | rank-1 | mAP | train min (per seed) |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            if v is None:
                cells.append("-")
                continue
            pairs = [] if base is None or r is base else [
                (r["per_seed"][s][k], base["per_seed"][s][k]) for s in r["per_seed"]
                if s in base["per_seed"] and r["per_seed"][s].get(k) is not None
                and base["per_seed"][s].get(k) is not None]
            delta = f" ({np.mean([a - b for a, b in pairs]):+.3f})" if pairs else ""
            cells.append(f"{v:.3f}{delta}")
        minutes = ", ".join(f"{f['train_min']:.1f}" for f in r["per_seed"].values())
        lines.append(f"| {r['variant']} | {r['report']} | {r['seeds']} | " + " | ".join(cells) + f" | {minutes} |")
    return "\n".join(lines + ["", threshold_table(rows)])


def threshold_table(rows: list[dict]) -> str:
    """Variable-length retrieval per run (``metrics.json`` ``reid.threshold``): the threshold, its
    cross-validated mean per-query F1 and images returned, against the fixed top-k and the best
    fixed length."""
    lines = ["| run | threshold | F1 (2-fold) | images returned | top-k F1 | best fixed k: F1 |", "|" + "---|" * 6]
    for r in rows:
        for seed, f in r["per_seed"].items():
            t = f.get("threshold")
            if t:
                top, best = t["top_k"], t["best_k"]
                lines.append(f"| {r['variant']}-s{seed} | {t['value']:.3f} | {t['f1']:.3f} | "
                             f"{t['mean_returned']:.1f} | {top['f1']:.3f} (k={top['k']}) | "
                             f"{best['f1']:.3f} (k={best['k']}) |")
    return "\n".join(lines)


def collect(out: Path) -> list[dict]:
    """Rows of every variant with at least one finished run, averaged over seeds."""
    import numpy as np

    rows = []
    for name, (what, report, _) in VARIANTS.items():
        runs = sorted(p for p in out.glob(f"{name}-s*") if (p / "metrics.json").is_file())
        if not runs:
            continue
        per_seed = {p.name.rsplit("-s", 1)[1]: figures(p) for p in runs}
        row = {"variant": name, "what": what, "report": report, "seeds": ",".join(per_seed), "per_seed": per_seed}
        for k in next(iter(per_seed.values())):
            values = [f[k] for f in per_seed.values() if isinstance(f.get(k), (int, float))]
            row[k] = float(np.mean(values)) if values else None
        rows.append(row)
    return rows


def write_table(path: Path, text: str) -> None:
    """Replace the table between the markers of ``path``."""
    doc = path.read_text()
    before, rest = doc.split(START, 1)
    _, after = rest.split(END, 1)
    path.write_text(f"{before}{START}\n{text}\n{END}{after}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", required=True, help="the market1501-course folder")
    p.add_argument("--out", default="runs/methods", help="where the runs go (default runs/methods)")
    p.add_argument("--only", help="comma-separated variants (default: all); choices: " + ", ".join(VARIANTS))
    p.add_argument("--seeds", default="0", help="comma-separated train.seed values (default 0)")
    p.add_argument("--table-only", action="store_true", help="train nothing: tabulate the finished runs")
    p.add_argument("--write", help="also write the table into this markdown file, between its markers")
    args = p.parse_args(argv)
    out = Path(args.out)
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choices: {', '.join(VARIANTS)}")
    if not args.table_only:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in names:
                run_variant(name, seed, args.data, out, lambda s: print(s, flush=True))
    text = table(collect(out))
    print(text)
    if args.write:
        write_table(Path(args.write), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
