"""Render an HTML report of a run, tuning or study directory, or compare runs side by side.

The report is one self-contained file (figures and thumbnails embedded): open it from disk in
any browser, no server or network needed. Only the files of the run are read; the model is
not rebuilt.

Examples:
    mtl-report runs/NAME                      # -> reports/NAME/index.html
    mtl-report runs/NAME --out /tmp/r.html
    mtl-report runs/A runs/B                  # -> reports/A-vs-B/index.html
    mtl-report tuning/NAME                    # trials table and best configuration
    mtl-report bench/results.json             # the benchmarks of bench/run_all.py

From a checkout without installing: python scripts/report.py (same arguments).
"""

from __future__ import annotations

import argparse

from mtl.cli.common import new_parser, run_main
from mtl.errors import MtlError


def parser() -> argparse.ArgumentParser:
    """The arguments of ``mtl-report``."""
    p = new_parser("report", __doc__)
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="a run, tuning or study directory; two or more run directories are compared")
    p.add_argument("--out", help="output .html file, or a folder to write index.html into "
                                 "(default reports/<name>/, or reports/<A>-vs-<B>/ for a comparison)")
    p.add_argument("--examples", type=int, default=None, metavar="N",
                   help="example thumbnails per group and task (4 groups: confident/unsure, right/wrong; default 6)")
    p.add_argument("--queries", type=int, default=None, metavar="N",
                   help="re-identification queries shown with their top-10 gallery (default 10)")
    p.add_argument("--quiet", action="store_true", help="print only the path of the written report")
    return p


def main(argv=None) -> int:
    """Render as ``mtl-report`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Raises:
        MtlError: bad input (a folder that is no run, search or study; bad counts); :func:`entry`
            prints it as one line.
    """
    args = parser().parse_args(argv)
    for value, flag in ((args.examples, "--examples"), (args.queries, "--queries")):
        if value is not None and value < 0:
            raise MtlError(f"{flag} must be 0 or more, got {value}")
    from mtl.report import render_comparison, render_report
    from mtl.report.bench import is_results_file, render_bench
    from mtl.report.examples import MAX_QUERIES, PER_GROUP

    if len(args.dirs) == 1 and is_results_file(args.dirs[0]):  # bench/results.json (bench/run_all.py)
        out = render_bench(args.dirs[0], args.out, quiet=args.quiet)
    elif len(args.dirs) == 1:
        out = render_report(args.dirs[0], args.out, quiet=args.quiet,
                            per_group=PER_GROUP if args.examples is None else args.examples,
                            max_queries=MAX_QUERIES if args.queries is None else args.queries)
    else:
        if args.examples is not None or args.queries is not None:
            raise MtlError("--examples and --queries apply to a single directory, not to a comparison")
        out = render_comparison(args.dirs, args.out, quiet=args.quiet)
    print(out if args.quiet else f"report: {out}  (open file://{out.resolve()} in a browser)")
    return 0


def entry() -> None:
    """The console script ``mtl-report``."""
    run_main(main)


if __name__ == "__main__":
    entry()
