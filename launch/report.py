"""Evaluation report from run directories: Markdown tables and PNG figures, as the paper reports and more.

    python launch/report.py runs/rainbow_psrl-* runs/rainbow-* --out report/
    python launch/report.py runs/sweep/*/*/* --out report/ --atari_step 100000 --reps 5000

Reads any mix of Atari and DMC run directories (several methods, games/tasks, seeds; seeds of one
method and game may be spread over several run directories). Writes <out>/report.md and
<out>/figures/*.png: per-game returns and human-normalised scores, mean/median/IQM/optimality gap
with stratified-bootstrap CIs (rliable), probability of improvement, seed consistency, learning
curves, DMC returns at 100k and 500k steps, with published baselines as marked rows. Missing seeds,
unfinished runs and mismatched budgets are warned about and shown, never silently averaged.
"""

import argparse
import os
import sys

from psrl_jax.analysis.report import ReportOptions, build_report
from psrl_jax.analysis.runs import NotARunDirectory


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="run directories (each with config.json and metrics/)")
    parser.add_argument("--out", required=True, help="output directory for report.md and figures/")
    parser.add_argument("--atari_step", type=int, default=None, help="score Atari runs at this step (default: budget)")
    parser.add_argument("--dmc_budgets", default="100000,500000", help="DMC steps to tabulate, comma-separated")
    parser.add_argument("--include_incomplete", action="store_true", help="average seeds short of the step (flagged)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples for the 95%% CIs")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random state")
    parser.add_argument("--title", default="psrl-jax evaluation report")
    parser.add_argument("--notes", default="", help="a Markdown file appended as the report's Notes section")
    parser.add_argument("--name", default="report.md", help="file name of the Markdown report inside --out")
    args = parser.parse_args()

    if args.reps < 1:
        sys.exit("error: --reps must be at least 1")
    try:
        budgets = tuple(int(b) for b in args.dmc_budgets.split(","))
    except ValueError:
        sys.exit(f"error: --dmc_budgets must be integers separated by commas, got {args.dmc_budgets!r}")
    notes = ""
    if args.notes:
        if not os.path.isfile(args.notes):
            sys.exit(f"error: --notes {args.notes} is not a file")
        with open(args.notes) as f:
            notes = f.read()
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        sys.exit(f"error: --out {args.out} is a file; it names the report's directory")
    options = ReportOptions(
        atari_step=args.atari_step,
        dmc_budgets=budgets,
        include_incomplete=args.include_incomplete,
        reps=args.reps,
        seed=args.seed,
        title=args.title,
        notes=notes,
    )
    try:
        path, warnings = build_report(args.run_dirs, args.out, options, name=args.name)
    except (NotARunDirectory, ValueError, KeyError) as error:
        sys.exit(f"error: {error}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
