"""Plot evaluation learning curves of run directories next to published scores.

Atari: each seed's curve and the published Atari 100k scores as lines.
    python launch/plot_curves.py runs/rainbow-RoadRunner-... --out docs/curve.png [--methods random,der,spr]

DMC: each run directory's mean ± std over its seeds, other implementations' curves from CSV files
(columns env_step, seed, return; e.g. a reference code's evaluations), and DrQ's published curve.
    python launch/plot_curves.py runs/drq-... --external "DrQ PyTorch=drq.csv" --out docs/curve.png
"""

import argparse
import os
import sys
import textwrap

from psrl_jax import cli
from psrl_jax.analysis.curves import (
    plot_dmc_curves,
    plot_learning_curves,
    read_external_curve,
    reference_scores,
)
from psrl_jax.analysis.published import ATARI_CSV, drq_curve
from psrl_jax.analysis.runs import NotARunDirectory, load_run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--reference", default=ATARI_CSV, help="published scores (default: the project's copy)")
    parser.add_argument("--methods", default="random,der,spr")
    parser.add_argument(
        "--external", action="append", default=[], help="DMC: LABEL=PATH of a CSV with env_step, seed, return"
    )
    args = parser.parse_args()
    # Everything is checked before anything is drawn: run directories, the table, methods, --out.
    try:
        runs = [load_run(run_dir) for run_dir in args.run_dirs]
    except NotARunDirectory as error:
        sys.exit(f"error: {error}")
    if len({(run.domain, run.env) for run in runs}) > 1:
        sys.exit("error: the run directories are of different games or tasks: plot one at a time")
    if runs[0].domain == "dmc":
        return plot_dmc(runs, args)
    if args.external:
        sys.exit("error: --external curves are for DMC runs")
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


def plot_dmc(runs, args):
    external = {}
    for item in args.external:
        label, sep, path = item.partition("=")
        if not sep or not label or not os.path.isfile(path):
            sys.exit(f"error: --external {item!r}: expected LABEL=PATH of an existing CSV file")
        try:
            external[label] = read_external_curve(path)
        except ValueError as error:
            sys.exit(f"error: {error}")
    cli.require_out_directory(args.out)
    task = runs[0].env
    title = f"{task}: " + ", ".join(dict.fromkeys([run.method for run in runs] + list(external)))
    title = textwrap.fill(title, 60)  # many methods: wrapped, not cut at the figure's edge
    plot_dmc_curves(runs, args.out, title, external, drq_curve().get(task))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
