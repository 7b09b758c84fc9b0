"""The evaluation report: run directories in, a Markdown file and PNG figures out (launch/report.py).

What is scored: each seed's evaluation return at a step, by default its run's budget
(config.total_env_steps; Atari 100k = 100k agent steps). A seed that has no evaluation at that step is
*incomplete*: the tables show its latest score marked with a dagger, and it is left out of every
average and statistic unless `include_incomplete` says otherwise (then the report says so). Missing
seeds, unfinished runs, budgets that differ between methods, games not covered by every method, and
duplicate seeds all become warnings at the top of the report and columns in its coverage table.
"""

import collections
import dataclasses
import datetime
import os

import numpy as np

from psrl_jax.analysis import figures, published, statistics
from psrl_jax.analysis.runs import load_run, method_differences

DMC_BUDGETS = (100_000, 500_000)
DAGGER = "†"


@dataclasses.dataclass
class Entry:
    """One method on one game or task: its seeds merged over every run directory that holds them."""

    domain: str
    method: str
    env: str
    budgets: set
    run_dirs: list
    seeds: dict  # {global seed: SeedResult}
    expected_seeds: int  # seeds the runs were started with
    finished_runs: int

    def scores_at(self, step: int) -> dict:
        """{seed: score} for the seeds evaluated at `step`."""
        return {s: r.score_at(step) for s, r in sorted(self.seeds.items()) if r.score_at(step) is not None}

    def latest_before(self, step: int) -> dict:
        """{seed: (step, score)} of each seed's latest evaluation at or before `step`."""
        latest = {}
        for s, r in sorted(self.seeds.items()):
            points = [(x, y) for x, y in r.curve() if x <= step]
            if points:
                latest[s] = points[-1]
        return latest


@dataclasses.dataclass
class ReportOptions:
    atari_step: int | None = None  # score Atari runs at this step instead of each run's budget
    dmc_budgets: tuple = DMC_BUDGETS
    include_incomplete: bool = False  # average seeds that never reached the step (flagged)
    reps: int = 2000  # bootstrap resamples for confidence intervals
    seed: int = 0  # bootstrap random state: the report is reproducible
    title: str = "psrl-jax evaluation report"
    notes: str = ""  # Markdown appended at the end (e.g. how the runs were made)


def gather(run_dirs: list) -> tuple[dict, list]:
    """{(domain, method, env): Entry} and the warnings found while merging runs."""
    warnings = []
    entries, configs = {}, {}
    given = collections.Counter(os.path.normpath(d) for d in run_dirs)  # insertion-ordered
    repeated = sorted(d for d, count in given.items() if count > 1)
    if repeated:
        warnings.append(f"given more than once, counted once: {', '.join(repeated)}")
    for run_dir in given:
        run = load_run(run_dir)
        key = (run.domain, run.method, run.env)
        entry = entries.setdefault(key, Entry(run.domain, run.method, run.env, set(), [], {}, 0, 0))
        if entry.run_dirs:  # one method name, one method: runs renamed by hand are kept apart
            first = entry.run_dirs[0]
            differences = method_differences(configs[first], run.config)
            if differences:
                warnings.append(
                    f"{run.method} on {run.env}: {run_dir} and {first} share a name but not a config "
                    f"({'; '.join(differences)}); give one a different config.name to report them apart"
                )
        configs[run_dir] = run.config
        entry.budgets.add(run.budget)
        entry.run_dirs.append(run_dir)
        entry.expected_seeds += run.num_seeds
        entry.finished_runs += run.finished
        if run.missing_seeds:
            warnings.append(f"{run_dir}: seeds {run.missing_seeds} of {run.num_seeds} wrote no metrics")
        if not run.finished:
            reached = max((s.reached for s in run.seeds), default=0)
            warnings.append(f"{run_dir}: unfinished ({run.method} on {run.env} reached {reached:,} of {run.budget:,})")
        for seed in run.seeds:
            if seed.seed in entry.seeds:
                kept = max(entry.seeds[seed.seed], seed, key=lambda s: s.reached)
                warnings.append(
                    f"{run.method} on {run.env}: seed {seed.seed} appears in several run directories; "
                    f"kept the one that got furthest ({kept.reached:,} steps)"
                )
                seed = kept
            entry.seeds[seed.seed] = seed
    for entry in entries.values():
        if len(entry.budgets) > 1:
            warnings.append(f"{entry.method} on {entry.env}: runs with different budgets {sorted(entry.budgets)}")
    return entries, warnings


def build_report(
    run_dirs: list, out_dir: str, options: ReportOptions | None = None, name: str = "report.md"
) -> tuple[str, list]:
    """Writes <out_dir>/<name> and <out_dir>/figures/*.png; returns the Markdown path and the warnings."""
    options = options or ReportOptions()
    if not run_dirs:
        raise ValueError("no run directories given")
    entries, warnings = gather(run_dirs)
    os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
    sections = []
    atari = {k: e for k, e in entries.items() if k[0] == "atari"}
    dmc = {k: e for k, e in entries.items() if k[0] == "dmc"}
    if atari:
        sections += _atari_section(atari, out_dir, options, warnings)
    if dmc:
        sections += _dmc_section(dmc, out_dir, options, warnings)

    header = [
        f"# {options.title}",
        "",
        f"Generated by `launch/report.py` from {len(run_dirs)} run director{'y' if len(run_dirs) == 1 else 'ies'} "
        f"on {datetime.date.today().isoformat()}. Rows marked *published* come from "
        "`psrl_jax/analysis/data/` (sources in its README), not from this project's runs. "
        f"Scores are mean evaluation returns; {DAGGER} marks a score from before the scoring step "
        "(the run had not got there), which is left out of averages"
        + (" unless stated." if not options.include_incomplete else "; this report includes them (flagged).")
        + f" Confidence intervals: 95%, stratified bootstrap, {options.reps} resamples.",
        "",
    ]
    if warnings:
        header += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    notes = ["## Notes", "", options.notes.strip(), ""] if options.notes.strip() else []
    path = os.path.join(out_dir, name)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(header + sections + notes).rstrip() + "\n")
    os.replace(path + ".tmp", path)
    return path, warnings


# ----------------------------------------------------------------------------------------------- Atari


def _atari_section(entries: dict, out_dir: str, options: ReportOptions, warnings: list) -> list:
    table = published.atari_table()
    methods = sorted({m for _, m, _ in entries})
    games = sorted({g for _, _, g in entries})
    for game in games:
        if published.canonical_game(game, table) is None:
            raise ValueError(f"no random/human scores for Atari game {game!r}; known: {', '.join(sorted(table))}")
    step_of = {key: options.atari_step or max(e.budgets) for key, e in entries.items()}
    budgets = sorted({step_of[k] for k in entries})
    if budgets != [100_000]:
        warnings.append(
            f"Atari runs are scored at step(s) {budgets}, the published rows at 100,000 (the Atari 100k budget)"
        )
    if len(budgets) > 1:
        warnings.append(
            f"Atari runs are scored at different steps {budgets}: methods are compared across budgets "
            "(see the scoring step column); pass --atari_step to score all at one step"
        )

    # per (method, game): seeds scored at the step, or their latest score if incomplete
    cells, usable = {}, {}
    coverage = []
    for key, entry in sorted(entries.items()):
        step = step_of[key]
        complete = entry.scores_at(step)
        latest = entry.latest_before(step)
        incomplete = {s: v for s, (_, v) in latest.items() if s not in complete}
        cells[key] = (complete, incomplete)
        use = dict(complete)
        if options.include_incomplete:
            use.update(incomplete)
        usable[key] = use
        reached = max((r.reached for r in entry.seeds.values()), default=0)
        status = "complete" if len(complete) == entry.expected_seeds else "incomplete"
        coverage.append(
            f"| {entry.method} | {entry.env} | {len(complete)}/{entry.expected_seeds} | {step:,} | {reached:,} | "
            f"{status} | {', '.join(f'`{d}`' for d in entry.run_dirs)} |"
        )
        if len(complete) < entry.expected_seeds:
            warnings.append(
                f"{entry.method} on {entry.env}: {len(complete)} of {entry.expected_seeds} seeds evaluated at "
                f"step {step:,}"
                + (
                    " (the others are averaged, flagged)"
                    if options.include_incomplete
                    else "; the others are left out of averages"
                )
            )

    lines = ["## Atari 100k", "", "### Runs", ""]
    lines += [
        "| method | game | seeds scored/started | scoring step | reached | status | run directories |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ] + coverage
    lines += ["", f"### Mean return per game (± std over seeds, n = seeds; {DAGGER} = not at the scoring step)", ""]
    lines += _atari_game_table(methods, games, cells, table, normalise=False)
    lines += ["", "### Human-normalised score per game", "", "HNS = (score − random) / (human − random).", ""]
    lines += _atari_game_table(methods, games, cells, table, normalise=True)

    # rliable statistics on the games every method covers, with the same number of seeds per game
    score_dict, runs_used = {}, {}
    unscored = [m for m in methods if not any(usable.get(("atari", m, g)) for g in games)]
    if unscored:
        warnings.append(f"{unscored}: no seed has a score at the scoring step on any game; not in the statistics")
    methods = [m for m in methods if m not in unscored]
    common = [g for g in games if methods and all(usable.get(("atari", m, g)) for m in methods)]
    for m in methods:
        left_out = [g for g in games if usable.get(("atari", m, g)) and g not in common]
        if left_out:
            warnings.append(f"{m}: games {left_out} are not covered by every method; left out of the statistics")
    if common:
        for m in methods:
            per_game = [usable[("atari", m, g)] for g in common]
            n = min(len(s) for s in per_game)
            if any(len(s) > n for s in per_game):
                warnings.append(
                    f"{m}: seeds per game differ ({[len(s) for s in per_game]}); statistics use the first {n}"
                )
            matrix = np.array(
                [
                    [published.human_normalized(s[seed], g, table) for seed in sorted(s)[:n]]
                    for g, s in zip(common, per_game, strict=True)
                ]
            ).T
            score_dict[m], runs_used[m] = matrix, n
        for p in published.ATARI_METHODS:
            name = f"{published.ATARI_METHOD_NAMES[p]} (published)"
            row = [table[published.canonical_game(g, table)].get(p) for g in common]
            if all(v is not None for v in row):
                score_dict[name] = np.array(
                    [[published.human_normalized(v, g, table) for v, g in zip(row, common, strict=True)]]
                )
                runs_used[name] = 1
        lines += _atari_statistics(score_dict, runs_used, methods, common, out_dir, options)
        lines += _seed_consistency_lines({m: score_dict[m] for m in methods}, "atari", "mean HNS over games", out_dir)
    else:
        lines += ["", "No game is covered by every method with scored seeds: no aggregate statistics.", ""]

    figures.learning_curves(
        entries,
        os.path.join(out_dir, "figures", "atari_curves.png"),
        published_points={g: _published_points(table, g) for g in games},
        xlabel="agent steps (x4 frames)",
    )
    lines += [
        "",
        "### Learning curves",
        "",
        "Mean over seeds (shaded: ± std); markers: published scores at their budget.",
        "",
    ]
    lines += ["![Atari learning curves](figures/atari_curves.png)", ""]
    return lines


def _published_points(table: dict, game: str) -> dict:
    row = table[published.canonical_game(game, table)]
    return {published.ATARI_METHOD_NAMES[p]: [(100_000, row[p])] for p in published.ATARI_METHODS if p in row}


def _atari_game_table(methods, games, cells, table, normalise: bool) -> list:
    head = (
        ["game"]
        + methods
        + ["random", "human"]
        + [f"{published.ATARI_METHOD_NAMES[p]}*" for p in published.ATARI_METHODS]
    )
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for g in games:
        row = table[published.canonical_game(g, table)]

        def norm(values, game=g):
            return published.human_normalized(values, game, table) if normalise else np.asarray(values, np.float64)

        cols = [g]
        for m in methods:
            complete, incomplete = cells.get(("atari", m, g), ({}, {}))
            if complete:
                v = norm(list(complete.values()))
                cols.append(
                    _mean_std(v, normalise) + f" (n={len(v)})" + (f" +{len(incomplete)}{DAGGER}" if incomplete else "")
                )
            elif incomplete:
                v = norm(list(incomplete.values()))
                cols.append(_mean_std(v, normalise) + f"{DAGGER} (n={len(v)})")
            else:
                cols.append("—")
        for p in ("random", "human") + published.ATARI_METHODS:
            cols.append(_number(float(norm([row[p]])[0]), normalise) if p in row else "—")
        lines.append("| " + " | ".join(cols) + " |")
    lines += ["", "\\* published (see `psrl_jax/analysis/data/README.md`)."]
    return lines


def _atari_statistics(score_dict, runs_used, methods, common, out_dir, options) -> list:
    points, intervals = statistics.interval_estimates(score_dict, options.reps, options.seed)
    lines = [
        "",
        f"### Aggregate human-normalised scores ({len(common)} game{'s' if len(common) != 1 else ''}: "
        f"{', '.join(common)})",
        "",
        "| method | runs per game | " + " | ".join(statistics.AGGREGATE_NAMES[a] for a in statistics.AGGREGATES) + " |",
        "| --- | --- | " + " | ".join("---" for _ in statistics.AGGREGATES) + " |",
    ]
    for name in score_dict:
        cols = [f"{points[name][i]:.3f} [{intervals[name][0][i]:.3f}, {intervals[name][1][i]:.3f}]" for i in range(4)]
        lines.append(f"| {name} | {runs_used[name]} | " + " | ".join(cols) + " |")
    lines += [
        "",
        "IQM: 25% trimmed mean over all runs × games; optimality gap: mean shortfall below HNS 1. "
        "A published method is one number per game, so its interval is a point.",
        "",
        "![aggregates](figures/atari_aggregates.png)",
    ]
    figures.interval_estimates(points, intervals, os.path.join(out_dir, "figures", "atari_aggregates.png"))

    names = list(score_dict)
    pairs = [(x, y) for x in methods for y in names if y != x]
    poi = statistics.probability_of_improvement(score_dict, pairs, options.reps, options.seed)
    lines += [
        "",
        "### Probability of improvement",
        "",
        "P(X > Y): the probability that a run of X on a random game beats a run of Y (the PSRL "
        "supplementary's Figure 2), with its 95% CI.",
        "",
        "| P(X > Y) | " + " | ".join(f"Y = {y}" for y in names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for x in methods:
        cols = []
        for y in names:
            cols.append("—" if y == x else "{:.2f} [{:.2f}, {:.2f}]".format(*poi[(x, y)]))
        lines.append(f"| X = {x} | " + " | ".join(cols) + " |")
    figures.probability_of_improvement(
        poi, methods, os.path.join(out_dir, "figures", "atari_probability_of_improvement.png")
    )
    lines += ["", "![probability of improvement](figures/atari_probability_of_improvement.png)"]
    return lines


def _seed_consistency_lines(score_dict: dict, domain: str, what: str, out_dir: str) -> list:
    """The supplementary's Figures 3/4: the mean (and std over seeds) as the number of seeds grows."""
    rows = {m: statistics.seed_consistency(s) for m, s in score_dict.items()}
    path = os.path.join(out_dir, "figures", f"{domain}_seed_consistency.png")
    figures.seed_consistency(rows, path, ylabel=what)
    lines = [
        "",
        "### Consistency over seeds",
        "",
        f"With the first n seeds: {what} and the std over seeds of each seed's average "
        "(the PSRL supplementary compares n = 5 and 10).",
        "",
        "| method | " + " | ".join(f"n={n}" for n in range(1, max(len(r) for r in rows.values()) + 1)) + " |",
        "| --- | " + " | ".join("---" for _ in range(max(len(r) for r in rows.values()))) + " |",
    ]
    for m, r in rows.items():
        lines.append(f"| {m} | " + " | ".join(f"{mean:.3f} ± {std:.3f}" for _, mean, std in r) + " |")
    lines += ["", f"![seed consistency](figures/{domain}_seed_consistency.png)", ""]
    return lines


# ------------------------------------------------------------------------------------------------- DMC


def _dmc_section(entries: dict, out_dir: str, options: ReportOptions, warnings: list) -> list:
    table = published.dmc_table()
    methods = sorted({m for _, m, _ in entries})
    tasks = sorted({t for _, _, t in entries})
    lines = ["## DeepMind Control from pixels", "", "### Runs", ""]
    lines += [
        "| method | task | seeds started | budget | reached | finished runs | run directories |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, e in sorted(entries.items()):
        reached = max((r.reached for r in e.seeds.values()), default=0)
        lines.append(
            f"| {e.method} | {e.env} | {e.expected_seeds} | {', '.join(f'{b:,}' for b in sorted(e.budgets))} | "
            f"{reached:,} | {e.finished_runs}/{len(e.run_dirs)} | {', '.join(f'`{d}`' for d in e.run_dirs)} |"
        )
    consistency = {}
    drq_points = {t: {int(p[0]): (p[1], p[2]) for p in c} for t, c in published.drq_curve().items()}
    for budget in options.dmc_budgets:
        head = ["task"] + methods + [_published_column(p) for p in published.DMC_METHODS]
        lines += ["", f"### Episode return at {budget // 1000}k environment steps (mean ± std over seeds)", ""]
        lines += ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
        for t in tasks:
            cols = [t]
            for m in methods:
                e = entries.get(("dmc", m, t))
                if e is None:
                    cols.append("—")
                    continue
                complete = e.scores_at(budget)
                if complete:
                    v = np.array(list(complete.values()))
                    cols.append(f"{_mean_std(v, False)} (n={len(v)})")
                    if len(complete) < e.expected_seeds:
                        warnings.append(
                            f"{m} on {t}: {len(complete)} of {e.expected_seeds} seeds evaluated at {budget:,}"
                        )
                    consistency.setdefault(budget, {}).setdefault(m, {})[t] = [complete[s] for s in sorted(complete)]
                else:
                    reached = max((r.reached for r in e.seeds.values()), default=0)
                    if reached >= budget:  # got past it, but evaluated on another schedule
                        cols.append(f"no evaluation there (reached {reached:,})")
                    else:
                        cols.append(f"not reached ({reached:,})")
            pub = dict(table.get((t, budget), {}))
            if "drq" not in pub and budget in drq_points.get(t, {}):
                pub["drq"] = drq_points[t][budget]  # a budget DrQ's table lacks: its curve's point there
            cols += [f"{pub[p][0]:.0f} ± {pub[p][1]:.0f}" if p in pub else "—" for p in published.DMC_METHODS]
            lines.append("| " + " | ".join(cols) + " |")
        lines += [
            "",
            "\\* published (see `psrl_jax/analysis/data/README.md`). † CURL's Table 1: CURL's code counts "
            "agent steps, so these rows may be at action-repeat times the budget in environment steps "
            "(800k on cartpole_swingup): not the budget of the other columns. DrQ at a budget its "
            "table lacks: the 10-seed mean ± std of its own curve at that step (data/drq_planet_curve.csv).",
        ]

    if consistency:
        budget = max(consistency)
        score_dict = {}
        for m, per_task in consistency[budget].items():
            n = min(len(v) for v in per_task.values())
            score_dict[m] = np.array([per_task[t][:n] for t in sorted(per_task)]).T
        lines += _seed_consistency_lines(score_dict, "dmc", f"mean return over tasks at {budget // 1000}k", out_dir)

    figures.learning_curves(
        entries,
        os.path.join(out_dir, "figures", "dmc_curves.png"),
        published_points={t: _dmc_published_points(table, t) for t in tasks},
        xlabel="environment steps (action repeats counted)",
        published_curves={t: {"DrQ": c} for t, c in published.drq_curve().items() if t in tasks},
        runs_range_only=True,
    )
    lines += ["", "### Learning curves", "", "![DMC learning curves](figures/dmc_curves.png)", ""]
    return lines


# --------------------------------------------------------------------------------------------- helpers


def _published_column(method: str) -> str:
    mark = "*†" if method in published.DMC_AGENT_STEP_METHODS else "*"
    return published.DMC_METHOD_NAMES[method] + mark


def _dmc_published_points(table: dict, task: str) -> dict:
    """Published table scores at their environment-step budget; the agent-step columns (another
    budget) and DrQ (drawn as its whole curve) are left out."""
    skip = (*published.DMC_AGENT_STEP_METHODS, "drq")
    points = {}
    for (t, budget), row in sorted(table.items()):
        if t == task:
            for p, (mean, _) in row.items():
                if p not in skip:
                    points.setdefault(published.DMC_METHOD_NAMES[p], []).append((budget, mean))
    return points


def _mean_std(values, normalised: bool) -> str:
    values = np.asarray(values, np.float64)
    return f"{_number(values.mean(), normalised)} ± {_number(values.std(), normalised)}"


def _number(x: float, normalised: bool) -> str:
    return f"{x:.3f}" if normalised else f"{x:,.1f}"
