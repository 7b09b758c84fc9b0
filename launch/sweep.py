"""Print (or run) the training commands of a games x seeds sweep, seeds grouped into vmapped runs.

    python launch/sweep.py --config configs/rainbow_psrl.py --games atari26 --seeds 10
    python launch/sweep.py --config configs/rainbow.py:smoke --games Pong,Breakout --seeds 4 \
        --seeds_per_run 2 --override eval.final_episodes=10 --run
    python launch/sweep.py --config configs/sac_psrl.py --tasks planet6 --seeds 10 --seeds_per_run 5

Each run trains --seeds_per_run seeds of one game in <root>/<config name>/<game>/s<first seed>x<seeds>.
stdout gets one shell command per unfinished run, for a scheduler; finished runs (final_eval.json) are
not printed, only counted in the summary on stderr. Invoking the same sweep again resumes runs that
have a checkpoint (--config.resume=True) and restarts those killed before their first one. --run
executes the commands one after the other here and stops at the first failure.
"""

import argparse
import os
import shlex
import subprocess
import sys

from psrl_jax.train.sweep import SweepError, plan_sweep, summary

LAUNCH_DIR = os.path.dirname(os.path.abspath(__file__))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file[:variant], as for launch/atari.py")
    parser.add_argument("--games", default=None, help="Atari: 'atari26' (default) or a comma-separated list of games")
    parser.add_argument("--tasks", default=None, help="DMC: 'planet6' (default) or a comma-separated list of tasks")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per game")
    parser.add_argument("--seeds_per_run", type=int, default=None, help="seeds vmapped in one run (default: all)")
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--root", default=os.path.join("runs", "sweep"))
    parser.add_argument("--override", action="append", default=[], help="field=value, for every run (repeatable)")
    parser.add_argument("--run", action="store_true", help="run the commands here, one after the other")
    parser.add_argument("--python", default=None, help="interpreter (default: python; with --run, this one)")
    return parser.parse_args()


def run_all(commands, runs) -> None:
    """Run one after the other, output streamed; exits non-zero at the first failure."""
    for i, (command, run) in enumerate(zip(commands, runs, strict=True), 1):
        print(f"[{i}/{len(commands)}] {shlex.join(command)}", file=sys.stderr, flush=True)
        code = subprocess.run(command).returncode
        if code != 0:
            sys.exit(
                f"error: run {i}/{len(commands)} ({run.run_dir}) failed with exit code {code}; "
                f"{len(commands) - i} runs were not started. Fix it and invoke the same sweep again: "
                "finished runs are skipped, the failed one resumes from its last checkpoint if it has one."
            )
    print(f"all {len(commands)} runs finished", file=sys.stderr)


def main():
    args = parse_args()
    python = args.python or (sys.executable if args.run else "python")
    try:
        runs = plan_sweep(
            args.config,
            args.games,
            args.seeds,
            args.seeds_per_run,
            args.first_seed,
            args.root,
            args.override,
            tasks=args.tasks,
        )
    except SweepError as error:
        sys.exit(f"error: {error}")
    todo = [run for run in runs if run.status != "done"]
    commands = [run.command(python, os.path.relpath(os.path.join(LAUNCH_DIR, run.script))) for run in todo]
    print(summary(runs), file=sys.stderr)
    if args.run:
        run_all(commands, todo)
        return
    for command in commands:
        print(shlex.join(command))


if __name__ == "__main__":
    main()
