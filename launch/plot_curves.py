"""Plot evaluation learning curves of run directories next to published Atari 100k scores.

    python launch/plot_curves.py runs/rainbow-RoadRunner-... --out docs/curve.png \
        [--methods random,der,spr]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from psrl_jax import cli  # noqa: E402
from psrl_jax.analysis.curves import plot_learning_curves, reference_scores  # noqa: E402
from psrl_jax.analysis.published import ATARI_CSV  # noqa: E402
from psrl_jax.analysis.runs import NotARunDirectory, load_run  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--reference", default=ATARI_CSV, help="published scores (default: the project's copy)")
    parser.add_argument("--methods", default="random,der,spr")
    args = parser.parse_args()
    # Everything is checked before anything is drawn: run directories, the table, methods, --out.
    try:
        runs = [load_run(run_dir) for run_dir in args.run_dirs]
    except NotARunDirectory as error:
        sys.exit(f"error: {error}")
    if any(run.domain != "atari" for run in runs):
        sys.exit(
            "error: plot_curves.py draws Atari runs next to the Atari 100k table; launch/report.py draws DMC curves"
        )
    if not os.path.isfile(args.reference):
        sys.exit(f"error: --reference {args.reference} is not a file")
    cli.require_out_directory(args.out)
    game = runs[0].env
    table = reference_scores(args.reference, game)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in table]
    if unknown:
        known = ", ".join(sorted(table)) or f"none: {game} is not in {args.reference}"
        sys.exit(f"error: --methods {', '.join(unknown)}: no such column for {game} (known: {known})")
    title = f"{runs[0].method} on {game}"
    try:
        plot_learning_curves(args.run_dirs, args.out, title=title, references={m: table[m] for m in methods})
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
