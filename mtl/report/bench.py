"""The HTML page of a benchmark run: ``bench/results.json`` (written by ``bench/run_all.py``).

One self-contained file: the machine and its load, then per benchmark its baseline, the package's
figure, their ratio, the target and whether it is met, notes, the command and the output's last
lines. Skipped and failed benchmarks are listed with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtl.errors import DataError

TEMPLATE = "bench.html.j2"


def load_results(path: str | Path) -> dict:
    """Read a ``results.json`` of ``bench/run_all.py``.

    Raises:
        DataError: missing, not JSON, or without a ``benchmarks`` list.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"benchmark results not found: {path}")
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read benchmark results ({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("benchmarks"), list):
        raise DataError(f"{path}: not a bench/run_all.py results file (no 'benchmarks' list)")
    return results


def is_results_file(path: str | Path) -> bool:
    """Whether ``path`` is a file ``render_bench`` reads (a ``.json`` file; ``mtl-report`` routes on it)."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() == ".json"


def bench_command(path: str | Path) -> str:
    """The command that renders the page of ``path`` again."""
    return f"python -c 'from mtl.report.bench import render_bench; render_bench({str(path)!r})'"


def render_bench(path: str | Path, out: str | Path | None = None, quiet: bool = True) -> Path:
    """Render ``results.json`` as an HTML page.

    Args:
        path: the results file.
        out: an ``.html`` file or a folder (``index.html`` in it); default ``reports/bench/index.html``.
        quiet: print nothing (otherwise the path written).

    Returns:
        The HTML file written.
    """
    from mtl.report.render import _write

    results = load_results(path)
    out = Path(out) if out is not None else Path("reports") / "bench"
    out = out if out.suffix.lower() in (".html", ".htm") else out / "index.html"
    rows = []
    for b in results["benchmarks"]:
        rows.append({"name": b.get("name", "?"), "title": b.get("title", b.get("name", "?")),
                     "status": b.get("status", "?"), "reason": b.get("reason"),
                     "baseline": b.get("baseline"), "package": b.get("package"), "ratio": b.get("ratio"),
                     "target": b.get("target"), "met": b.get("met"), "notes": b.get("notes") or [],
                     "command": b.get("command"), "output": b.get("output") or [],
                     "load": [b.get("load_before"), b.get("load_after")], "wall_s": b.get("wall_s")})
    written = _write(TEMPLATE, {"title": f"Benchmarks {results.get('created', '')}".strip(), "results": results,
                                "rows": rows, "source": str(path), "report_command": bench_command(path)}, out)
    if not quiet:
        print(written)
    return written
