"""Where a compiled program's time goes, per `jax.named_scope`, read from a jax.profiler trace.

`jax.profiler.trace` writes an XPlane file that TensorBoard's profile plugin and Perfetto show op
by op. This module reads the same file with `jax.profiler.ProfileData` and adds up the time of each
compiled op (an XLA thunk on the CPU, a kernel on a GPU) under the named scope it was traced in
(encoder, correspondence, warp, aat, soft_target, ...). The scope comes from the op's `op_name`
metadata in the compiled HLO text, e.g.

    jit(update)/vmap(transpose(jvp(critic)))/psrl_loss/warp/mul   ->   critic/psrl_loss/warp, backward

so the table splits forward from backward passes (`transpose(...)` in the name stack). It is a
plain-text answer to "what holds this update back" that fits in a benchmark's JSON, for machines
where a trace viewer is not at hand (a remote GPU node whose files come back a few at a time).

On the CPU, XLA runs independent thunks on several threads at once, so the op times of a dispatch
can add up to more than its wall time; fractions are of the summed op time. An asynchronous thunk
(a convolution) is on record only as its launch: a stretch when no op is on record is added to the
op that the next op to start was waiting for (`op_times`), which is exact for a chain of dependent
ops and an estimate where several run at once.

`profile_dispatches` is the one entry point the launch scripts use: trace a few runs of a compiled
program and return its table (or the reason there is none).
"""

import collections
import glob
import os
import re

_DEFINED = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=")
_OP_NAME = re.compile(r"\bmetadata=\{[^}]*?op_name=\"([^\"]*)\"")
_CALLS = re.compile(r"\bcalls=%?([\w.\-]+)")
_ATTRIBUTES = re.compile(
    r"\b(?:calls|to_apply|body|condition|branch_computations|called_computations)=(?:\{[^}]*\}|%?[\w.\-]+)"
    r"|\bmetadata=\{[^}]*\}"
)
_OPERAND = re.compile(r"%([\w.\-]+)")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+[({]")
_NUMBERED = re.compile(r"[.]\d+$")
_WRAPPER = re.compile(r"^(\w+)\((.*)\)$")
_FUNCTION_WRAPPERS = ("jit", "pjit")  # jit(f): a function's name, not a scope
# Name-stack components that transforms and control flow add on their own: not scopes either.
# An unrolled scan's body is "closed_call" up to JAX 0.10 and "eval_jaxpr" from 0.11 (the GPU image's).
_NOT_SCOPES = frozenset(
    {"closed_call", "eval_jaxpr", "core_call", "remat", "checkpoint", "while", "body", "cond", "branch"}
)
UNSCOPED = "(no scope)"
_CPU_DISPATCH = "ThunkExecutor::Execute"  # XLA:CPU's events spanning a run of a compiled program
# Timelines a GPU trace may derive from its stream lines (the same kernels again, grouped).
_DERIVED_LINES = frozenset({"XLA Ops", "XLA Modules", "TensorFlow Ops", "Framework Ops", "Source code", "Steps"})


def scope_path(op_name: str) -> tuple[str, bool]:
    """(named-scope path, is backward) of one op's `op_name` metadata. The last component is the
    primitive and is dropped; transform wrappers (vmap, jvp, transpose, ...) are peeled off the
    scope names they wrap; `jit(f)` components are function names and are skipped."""
    parts = op_name.split("/")[:-1]
    scopes, backward = [], False
    for part in parts:
        wrappers = []
        match = _WRAPPER.match(part)
        while match:
            wrappers.append(match.group(1))
            part = match.group(2)
            match = _WRAPPER.match(part)
        backward = backward or "transpose" in wrappers
        if wrappers and wrappers[0] in _FUNCTION_WRAPPERS:
            continue
        if part and part not in _NOT_SCOPES:
            scopes.append(part)
    return "/".join(scopes) or UNSCOPED, backward


def hlo_op_names(hlo_text: str) -> tuple[str, dict[str, str], dict[str, list[str]]]:
    """(module name, instruction name -> op_name, instruction name -> operand names) of a compiled
    module's text (`compiled.as_text()`). Instructions without metadata of their own get one:
    a fusion or call takes the op_name that most instructions of the computation it calls carry;
    an instruction XLA added (a layout copy, the convolution of a rewritten gradient) takes its
    first user's, else its first operand's, so it is counted in the scope it serves."""
    lines = hlo_text.splitlines()
    header = re.match(r"HloModule\s+([\w.\-]+)", lines[0]) if lines else None
    module = header.group(1) if header else ""
    names, calls, operands, per_computation = {}, {}, {}, collections.defaultdict(collections.Counter)
    computation = ""
    for line in lines:
        if not line.startswith((" ", "\t")):
            found = _COMPUTATION.match(line)
            computation = found.group(1) if found else computation
            continue
        defined = _DEFINED.match(line)
        if not defined:
            continue
        instruction = defined.group(1)
        body = _ATTRIBUTES.sub("", line[defined.end() :])  # called computations are not operands
        operands[instruction] = _OPERAND.findall(body)
        found = _OP_NAME.search(line)
        if found:
            names[instruction] = found.group(1)
            per_computation[computation][found.group(1)] += 1
        called = _CALLS.search(line)
        if called:
            calls[instruction] = called.group(1)
    for instruction, computation in calls.items():
        if instruction not in names and per_computation.get(computation):
            names[instruction] = per_computation[computation].most_common(1)[0][0]
    users = collections.defaultdict(list)
    for instruction, inputs in operands.items():
        for name in inputs:
            users[name].append(instruction)
    changed = True
    while changed:  # users first: a copy is made for the op that reads it
        changed = False
        for instruction in operands:
            if instruction in names:
                continue
            named = [n for n in users[instruction] if n in names] or [n for n in operands[instruction] if n in names]
            if named:
                names[instruction] = names[named[0]]
                changed = True
    return module, names, operands


def latest_xplane(trace_dir: str) -> str:
    """The newest .xplane.pb under a jax.profiler.trace directory."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no .xplane.pb under {trace_dir} (was jax.profiler.trace run there?)")
    return max(paths, key=os.path.getmtime)


def op_times(xplane_path: str, module: str, operands: dict | None = None) -> tuple[dict, list]:
    """({run id: {hlo instruction name: seconds}}, [seconds of each CPU dispatch]) for the ops of
    `module` in a trace, one entry per run (dispatch) of the program. Device planes (GPU kernels) are
    used when they hold the module's ops, else the host's (CPU thunks); ops without a run id are
    filed under None.

    On the CPU an asynchronous thunk (a convolution handed to the Eigen thread pool) records only
    its launch, so while it runs no op is on record. Each such stretch inside a dispatch (between
    ops, or up to the dispatch's end, when no op of any thread is running) is added to the op being
    waited for: of the operands (`hlo_op_names`) of the op that starts when the stretch ends, the one
    launched last; failing that (no operands given, or none launched yet), the op launched last. An op
    event that encloses others on its thread (a while loop around its body) is left out, so nothing
    is counted twice."""
    from jax.profiler import ProfileData

    profile = ProfileData.from_file(xplane_path)
    per_plane, walls = {}, []
    for plane in profile.planes:
        ops, dispatches = [], []  # ops: [start, end, name, run id]
        for line in plane.lines:
            if line.name in _DERIVED_LINES:  # GPU planes repeat their streams' kernels in these
                continue
            on_line = []
            for event in line.events:
                stats = dict(event.stats)
                if stats.get("hlo_module") == module and "hlo_op" in stats:
                    end = event.start_ns + event.duration_ns
                    on_line.append((event.start_ns, end, stats["hlo_op"], stats.get("run_id")))
                elif event.name.startswith(_CPU_DISPATCH):
                    dispatches.append((event.start_ns, event.start_ns + event.duration_ns, stats.get("run_id")))
            on_line.sort(key=lambda op: op[:2])
            for i, op in enumerate(on_line):
                if not (i + 1 < len(on_line) and on_line[i + 1][0] < op[1]):  # not enclosing the next op
                    ops.append(list(op))
        if not ops:
            continue
        ops.sort(key=lambda op: op[:2])
        durations = [end - start for start, end, _, _ in ops]
        if not plane.name.startswith("/device:"):
            # this module's runs, outermost only: XLA:CPU nests executors (fusions, loops) inside a run
            runs = {op[3] for op in ops}
            dispatches = sorted(d for d in dispatches if d[2] in runs)
            dispatches = [
                d for d in dispatches if not any(o[0] <= d[0] and d[1] <= o[1] and o != d for o in dispatches)
            ]
            walls = [(last - first) * 1e-9 for first, last, _ in dispatches]
            for _, last, run in dispatches:
                covered, previous, launched = None, None, {}  # reach of ops so far; op launched last
                for i, (start, end, name, op_run) in enumerate(ops):
                    if op_run != run or start > last:
                        continue
                    if covered is not None and start > covered:  # nothing on record: waiting for an op
                        waited = [launched[n] for n in (operands or {}).get(name, ()) if n in launched]
                        durations[max(waited) if waited else previous] += start - covered
                    covered = end if covered is None else max(covered, end)
                    previous = launched[name] = i
                if previous is not None and last > covered:
                    durations[previous] += last - covered
        per_plane[plane.name] = [(d, name, run) for d, (_, _, name, run) in zip(durations, ops, strict=True)]
    device = [name for name in per_plane if name.startswith("/device:")]
    per_run = collections.defaultdict(lambda: collections.defaultdict(float))
    for name in device or list(per_plane):
        for duration_ns, op, run in per_plane[name]:
            per_run[run][op] += duration_ns * 1e-9
    return {run: dict(ops) for run, ops in per_run.items()}, walls


def time_by_scope(xplane_path: str, hlo_text: str, dispatches: int, depth: int = 0) -> dict:
    """Seconds per dispatch under each named scope (its path cut to `depth` components; 0 = whole),
    forward and backward apart, for the compiled module `hlo_text` traced `dispatches` times: the
    median over the traced dispatches when the trace tells them apart (one slow dispatch does not
    move it), else the total / dispatches. Returns {"module", "op_seconds_per_dispatch",
    "dispatches_traced", "dispatch_seconds" (CPU), "rows": [{"scope", "backward", "seconds",
    "fraction", "ops"}] sorted by time}."""
    import numpy as np

    module, names, operands = hlo_op_names(hlo_text)
    per_run, walls = op_times(xplane_path, module, operands)
    if not per_run:
        raise ValueError(f"the trace {xplane_path} holds no ops of module {module!r}")
    runs = list(per_run.values()) if None not in per_run else [per_run[None]]
    scale = 1.0 if None not in per_run else 1.0 / dispatches
    keys, per_scope, ops = set(), [], collections.Counter()
    for run in runs:
        seconds = collections.defaultdict(float)
        for op, op_seconds in run.items():
            path, backward = scope_path(names.get(op, ""))
            if path == UNSCOPED:  # no metadata (XLA's own ops): name them by kind, "copy.12" -> copy
                path = f"{UNSCOPED} {_NUMBERED.sub('', op)}"
            elif depth:
                path = "/".join(path.split("/")[:depth])
            seconds[(path, backward)] += op_seconds * scale
            ops[(path, backward)] += 1
        per_scope.append(seconds)
        keys |= set(seconds)
    rows = {key: float(np.median([seconds.get(key, 0.0) for seconds in per_scope])) for key in keys}
    total = sum(rows.values())
    table = [
        {
            "scope": path,
            "backward": backward,
            "seconds": value,
            "fraction": value / total,
            "ops": ops[path, backward] // len(runs),
        }
        for (path, backward), value in rows.items()
    ]
    table.sort(key=lambda row: -row["seconds"])
    return {
        "module": module,
        "op_seconds_per_dispatch": total,
        "dispatches_traced": len(runs) if None not in per_run else dispatches,
        "dispatch_seconds": walls,
        "rows": table,
    }


def profile_dispatches(run_once, hlo_text: str, dispatches: int, trace_dir: str, depth: int = 0) -> dict:
    """Trace `dispatches` calls of `run_once` (each one run of the compiled program `hlo_text`,
    blocking until done) into trace_dir, and return `time_by_scope` of them plus "trace_dir". A trace
    this cannot read gives {"error": reason, "trace_dir"} instead of an exception, so a benchmark
    keeps the measurements it made before."""
    import jax

    with jax.profiler.trace(trace_dir):
        for _ in range(dispatches):
            run_once()
    try:
        summary = time_by_scope(latest_xplane(trace_dir), hlo_text, dispatches, depth)
    except (OSError, ValueError) as error:
        return {"error": f"{type(error).__name__}: {error}", "trace_dir": trace_dir}
    return dict(summary, trace_dir=trace_dir)


def format_scope_table(summary: dict, top: int = 20) -> str:
    """The rows of `time_by_scope` as an aligned text table (the `top` slowest), or the reason
    `profile_dispatches` has none."""
    if "error" in summary:
        return f"time per named scope not available ({summary['error']})"
    lines = [f"{'named scope':56s} {'pass':8s} {'ms/dispatch':>12s} {'share':>7s} {'ops':>5s}"]
    for row in summary["rows"][:top]:
        direction = "backward" if row["backward"] else "forward"
        share = f"{100 * row['fraction']:.1f}%"
        scope = row["scope"] if len(row["scope"]) <= 56 else "..." + row["scope"][-53:]  # the tail says most
        lines.append(f"{scope:56s} {direction:8s} {1e3 * row['seconds']:12.1f} {share:>7s} {row['ops']:5d}")
    lines.append(f"{'all ops':56s} {'':8s} {1e3 * summary['op_seconds_per_dispatch']:12.1f}")
    if summary.get("dispatch_seconds"):
        walls = ", ".join(f"{1e3 * seconds:.1f}" for seconds in summary["dispatch_seconds"])
        lines.append(f"median over {summary['dispatches_traced']} traced dispatches of wall ms {walls}")
    return "\n".join(lines)
