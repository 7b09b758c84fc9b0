"""psrl_jax/profile_scopes.py: named-scope paths from op metadata, and time per scope from a real trace."""

import jax
import jax.numpy as jnp
import pytest
from compile_level import jit_at_launch_level

from psrl_jax.profile_scopes import (
    UNSCOPED,
    format_scope_table,
    hlo_op_names,
    latest_xplane,
    profile_dispatches,
    scope_path,
    time_by_scope,
)


@pytest.mark.parametrize(
    ("op_name", "expected"),
    [
        ("jit(update)/vmap(jvp(critic))/psrl_loss/warp/mul", ("critic/psrl_loss/warp", False)),
        ("jit(update)/vmap(transpose(jvp(critic)))/psrl_loss/warp/mul", ("critic/psrl_loss/warp", True)),
        ("jit(update_many)/jit(main)/optimizer/add", ("optimizer", False)),
        ("jit(f)/closed_call/encoder/transpose(jvp(Conv_0))/conv_general_dilated", ("encoder/Conv_0", True)),
        ("jit(f)/while/body/aat/tanh", ("aat", False)),
        # JAX 0.11's name for an unrolled scan's body (0.10: closed_call), seen in its HLO
        ("jit(f)/transpose(jvp(outer))/eval_jaxpr/inner/mul", ("outer/inner", True)),
        ("jit(update_many)/eval_jaxpr/optimizer/add", ("optimizer", False)),
        ("jit(f)/add", (UNSCOPED, False)),
        ("", (UNSCOPED, False)),
    ],
)
def test_scope_path_peels_transforms_and_skips_function_names(op_name, expected):
    assert scope_path(op_name) == expected


def _two_scope_program():
    """A jitted gradient with a heavy scope (three 384x384 matmuls) and a light one (one add)."""

    def loss(w, x):
        with jax.named_scope("heavy"):
            h = x
            for _ in range(3):
                h = jnp.tanh(h @ w)
        with jax.named_scope("light"):
            h = h + 1.0
        return jnp.sum(h * h)

    fn = jax.jit(jax.grad(loss))
    w = jax.random.normal(jax.random.PRNGKey(0), (384, 384)) / 20
    x = jax.random.normal(jax.random.PRNGKey(1), (384, 384))
    return fn, w, x


def test_hlo_op_names_reads_every_scheduled_op_of_a_compiled_module():
    fn, w, x = _two_scope_program()
    module, names, operands = hlo_op_names(fn.lower(w, x).compile().as_text())
    assert module.startswith("jit_")
    paths = {scope_path(op_name)[0] for op_name in names.values()}
    assert {"heavy", "light"} <= paths
    # the backward pass of the matmuls is there, under the same scope
    assert any(scope_path(op_name) == ("heavy", True) for op_name in names.values())
    # every instruction has an op_name, its own or its user's / operand's, and operands are instructions
    assert set(operands) <= set(names)
    assert all(name in operands for inputs in operands.values() for name in inputs)
    assert any(len(inputs) == 2 for inputs in operands.values())  # the matmuls read two arrays


def test_time_by_scope_attributes_a_real_trace_to_its_scopes(tmp_path):
    fn, w, x = _two_scope_program()
    compiled = fn.lower(w, x).compile()
    jax.block_until_ready(compiled(w, x))
    dispatches = 3
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(dispatches):
            jax.block_until_ready(compiled(w, x))
    summary = time_by_scope(latest_xplane(str(tmp_path)), compiled.as_text(), dispatches)

    rows = {(row["scope"], row["backward"]): row for row in summary["rows"]}
    assert ("heavy", False) in rows and ("heavy", True) in rows
    # three 384^3 matmuls forward (and six backward) against one elementwise add
    light = sum(row["seconds"] for (scope, _), row in rows.items() if scope == "light")
    assert rows[("heavy", False)]["seconds"] > light
    assert sum(row["fraction"] for row in summary["rows"]) == pytest.approx(1.0)
    assert summary["op_seconds_per_dispatch"] == pytest.approx(sum(row["seconds"] for row in summary["rows"]))
    assert all(row["ops"] >= 1 for row in summary["rows"])
    seconds = [row["seconds"] for row in summary["rows"]]
    assert seconds == sorted(seconds, reverse=True)

    table = format_scope_table(summary)
    assert "heavy" in table and "backward" in table and "all ops" in table

    cut = time_by_scope(latest_xplane(str(tmp_path)), compiled.as_text(), dispatches, depth=1)
    assert cut["op_seconds_per_dispatch"] == pytest.approx(summary["op_seconds_per_dispatch"])


def test_an_asynchronous_convolution_gets_the_time_it_runs(tmp_path):
    """XLA:CPU hands convolutions to a thread pool and records only their launch; the stretch with no
    op on record until the next op is the convolution's (without it the conv would read ~0.1 ms here
    and the cheap op after it all the time)."""

    def f(x, kernel):
        with jax.named_scope("conv"):
            dims = ("NHWC", "HWIO", "NHWC")
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dims)
        with jax.named_scope("post"):
            return jnp.tanh(y) * 2.0

    x = jax.random.normal(jax.random.PRNGKey(0), (64, 41, 41, 32))  # 2 GFLOP of 3x3 convolution
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 32, 32)) / 10
    compiled = jit_at_launch_level(f).lower(x, kernel).compile()  # timed: at -O0 tanh costs as much as the conv
    jax.block_until_ready(compiled(x, kernel))
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(2):
            jax.block_until_ready(compiled(x, kernel))
    summary = time_by_scope(latest_xplane(str(tmp_path)), compiled.as_text(), 2)
    seconds = {row["scope"]: row["seconds"] for row in summary["rows"] if not row["backward"]}
    assert seconds["conv"] > seconds["post"]


def test_a_trace_without_the_module_or_no_trace_is_a_clear_error(tmp_path):
    fn, w, x = _two_scope_program()
    with pytest.raises(FileNotFoundError, match="no .xplane.pb"):
        latest_xplane(str(tmp_path))
    other = jax.jit(lambda a: a * 2.0)
    with jax.profiler.trace(str(tmp_path)):
        jax.block_until_ready(other(x))
    with pytest.raises(ValueError, match="holds no ops of module"):
        time_by_scope(latest_xplane(str(tmp_path)), fn.lower(w, x).compile().as_text(), 1)
    # the launch scripts' entry point reports it instead of raising, so a benchmark keeps its numbers
    trace_dir = str(tmp_path / "other")
    summary = profile_dispatches(
        lambda: jax.block_until_ready(other(x)), fn.lower(w, x).compile().as_text(), 1, trace_dir
    )
    assert "holds no ops of module" in summary["error"] and summary["trace_dir"] == trace_dir
    assert "not available" in format_scope_table(summary)
