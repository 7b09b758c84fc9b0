"""Plot evaluation learning curves of run directories next to published Atari 100k scores.

    python launch/plot_curves.py runs/rainbow-RoadRunner-... --out docs/curve.png \
        [--methods random,der,spr]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from psrl_jax.analysis.curves import plot_learning_curves, reference_scores  # noqa: E402
from psrl_jax.analysis.published import ATARI_CSV  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--reference", default=ATARI_CSV, help="published scores (default: the project's copy)")
    parser.add_argument("--methods", default="random,der,spr")
    args = parser.parse_args()
    with open(os.path.join(args.run_dirs[0], "config.json")) as f:
        config = json.load(f)
    game = config["env"]["game"]
    table = reference_scores(args.reference, game)
    references = {m: table[m] for m in args.methods.split(",") if m in table}
    plot_learning_curves(args.run_dirs, args.out, title=f"{config['name']} on {game}", references=references)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
