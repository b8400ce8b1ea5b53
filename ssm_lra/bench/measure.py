"""What one benchmark worker measures for one experiment: the full training step and one layer.

Runs inside a fresh process per experiment (see ssm_lra.bench.cli), so the device's peak memory
belongs to this experiment alone and an out-of-memory error ends only this process.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssm_lra.bench import hlo
from ssm_lra.bench import roofline as rl

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Only shapes the learning-rate schedule, which does not change the cost of a step.
NUM_TRAIN = 100_000


def compose_config(experiment: str, overrides: Sequence[str]):
    """The config `python -m ssm_lra.train experiment=<experiment> <overrides>` would run."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])


def random_batch(spec, batch_size: int, seed: int = 0) -> dict:
    """A training batch of the task's shapes and dtypes with random contents: token ids within the
    vocabulary (or reals in [0, 1)), masks of ones (every position real), labels within the classes."""
    import jax
    import jax.numpy as jnp

    from ssm_lra.engine.steps import dummy_batch

    shapes = dummy_batch(spec, batch_size)
    k_in, k_label = jax.random.split(jax.random.PRNGKey(seed))
    shape = shapes["inputs"].shape
    if spec.tokens:
        inputs = jax.random.randint(k_in, shape, 0, spec.vocab_size, jnp.int32)
    else:
        inputs = jax.random.uniform(k_in, shape, jnp.float32)
    return {
        "inputs": inputs,
        "mask": jnp.ones_like(shapes["mask"]),
        "label": jax.random.randint(k_label, (batch_size,), 0, spec.num_classes, jnp.int32),
        "weight": jnp.ones((batch_size,), jnp.float32),
    }


def peak_memory_bytes() -> int | None:
    """The allocator's peak on the first device since the process started (None where not reported, e.g. CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return int(peak) if peak is not None else None


def compiled_costs(compiled) -> dict:
    """XLA's cost analysis of a compiled program, with its loops (counted once by XLA) and its
    Pallas kernels (not counted by XLA; their operands and results are `kernel_io_bytes`)."""
    costs = rl.read_cost_analysis(compiled.cost_analysis())
    try:
        text = compiled.as_text()
    except Exception:  # as_text is best effort on some backends; the costs still stand
        text = None
    costs["has_loops"] = hlo.has_loops(text) if text is not None else None
    costs["loops"] = hlo.loops(text) if text is not None else None
    costs["kernels"] = hlo.kernels(text) if text is not None else None
    costs["kernel_io_bytes"] = hlo.kernel_io_bytes(text) if text is not None else None
    costs["memory"] = compiled_memory(compiled)
    return costs


def compiled_memory(compiled) -> dict | None:
    """XLA's buffer assignment of a compiled program: argument, output and temporary bytes (None
    where the backend does not report it). Temporaries are what the program needs on top of its
    inputs and outputs: the activations kept for the backward pass, scan states, FFT buffers."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not every backend implements it; the rest of the row still stands
        return None
    if stats is None:
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    return {name.replace("_size_in", ""): getattr(stats, name, None) for name in names}


def time_train_steps(step_fn, state, batch, warmup: int, steps: int):
    """Per-step wall times of a state-donating step: each timed call is followed by
    block_until_ready on everything it returns, so a time is one full step on the device."""
    import jax

    for _ in range(warmup):
        state, metrics = step_fn(state, batch)
        jax.block_until_ready((state, metrics))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return state, metrics, times


def time_back_to_back(step_fn, state, batch, steps: int):
    """Seconds for `steps` steps dispatched back to back and waited for once at the end, as the
    training loop runs them: the host queues step n + 1 while the device runs step n, so the time
    between steps that a per-step wait exposes (dispatch, launch of the first kernels) is hidden."""
    import jax

    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    return state, metrics, time.perf_counter() - start


BACK_TO_BACK_ROUNDS = 3


def time_back_to_back_rounds(step_fn, state, batch, steps: int, rounds: int = BACK_TO_BACK_ROUNDS):
    """time_back_to_back repeated `rounds` times: seconds per round. One round is a single sample,
    which one hitch (a clock change, the host pausing) can move by 10%; the median round is not."""
    seconds = []
    for _ in range(rounds):
        state, metrics, round_s = time_back_to_back(step_fn, state, batch, steps)
        seconds.append(round_s)
    return state, metrics, seconds


def time_calls(fn, args: tuple, warmup: int, reps: int) -> list[float]:
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def step_options(make_train_step, trainer: dict) -> dict:
    """Keyword arguments of make_train_step that the trainer config sets (gradient accumulation),
    passed only where the installed engine takes them."""
    accumulate = int(trainer.get("accumulate_grad_batches") or 1)
    if accumulate == 1:
        return {}
    if "accumulate" not in inspect.signature(make_train_step).parameters:
        raise ValueError("trainer.accumulate_grad_batches > 1, but this engine's make_train_step takes no `accumulate`")
    return {"accumulate": accumulate}


def block_like(model):
    """A ResidualBlock with the model's own settings: each of the block's fields (mixer,
    mixer_config, d_model, norm, prenorm, activation, dropout, dtype, ...) taken from the
    classifier's field of the same name, so that the block is the one the model stacks."""
    from ssm_lra.model import ResidualBlock

    fields = {f.name for f in dataclasses.fields(ResidualBlock)} - {"parent", "name"}
    return ResidualBlock(**{name: getattr(model, name) for name in fields if hasattr(model, name)})


def compute_ceiling(ceilings: dict, trainer: dict) -> tuple[str, float]:
    """The matrix rate the model's dense layers can reach: bfloat16 with mixed precision, else
    float32 at jax's default precision."""
    key = "matmul_bf16" if trainer.get("precision") == "bfloat16" else "matmul_f32_default"
    return key, ceilings[key]["flops_per_s"]


def measure_train_step(plan, warmup: int, steps: int) -> dict:
    """Compile time, step-time statistics, throughput, parameters, peak memory and XLA costs of
    the real training step (forward, backward, optimizer update) on random data."""
    import jax

    from ssm_lra.engine.setup import build_state
    from ssm_lra.engine.steps import count_params, make_train_step

    batch_size = plan.trainer["batch_size"]
    _, tx, state = build_state(plan, NUM_TRAIN)
    batch = random_batch(plan.spec, batch_size)
    params = count_params(state.params)
    step = make_train_step(plan.model, tx, **step_options(make_train_step, plan.trainer))

    start = time.perf_counter()
    if hasattr(step, "lower"):
        lowered = step.lower(state, batch)
        lowered_s = time.perf_counter() - start
        step = lowered.compile()
        compile_s = time.perf_counter() - start
        costs = compiled_costs(step)
    else:
        # A step that is not one jitted function (no .lower): its first call, compilation
        # included, stands for the compile time, and XLA's costs are not available.
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        lowered_s, compile_s, costs = None, time.perf_counter() - start, None

    state, metrics, times = time_train_steps(step, state, batch, warmup, steps)
    state, metrics, rounds_s = time_back_to_back_rounds(step, state, batch, steps)
    back_to_back_s = float(np.median(rounds_s))
    loss = float(jax.device_get(metrics["loss"]))
    stats = rl.summarize_times(times)
    positions = int(np.prod(batch["mask"].shape))  # both documents of a pair count (retrieval)
    return {
        "params": params,
        "batch_size": batch_size,
        "seq_len": plan.spec.seq_len,
        "trace_lower_s": lowered_s,
        "compile_s": compile_s,
        "step_s": stats,
        "seq_per_s": batch_size / stats["median"],
        "tokens_per_s": positions / stats["median"],
        # What training sees: the same steps without a wait after each (see time_back_to_back),
        # the median of a few rounds.
        "back_to_back_step_s": back_to_back_s / steps,
        "back_to_back_seq_per_s": batch_size * steps / back_to_back_s,
        "back_to_back_steps": steps,
        "back_to_back_rounds_s": rounds_s,
        "peak_memory_bytes": peak_memory_bytes(),
        "last_loss": loss,
        "loss_finite": bool(np.isfinite(loss)),
        "step_cost": costs,
    }


def layer_fwd_bwd(block):
    """(params, batch_stats, x, mask, cotangent, rng) -> (y, d params, d x, new batch stats): one
    residual block's forward and backward pass as training runs it (train=True, batch statistics
    updated, dropout on). Everything is an argument, so that XLA cannot fold the mask of ones or
    the weights into the program and make the layer look cheaper than it is in the model."""
    import jax

    from ssm_lra.engine.steps import model_variables

    def fwd_bwd(params, batch_stats, x, mask, cotangent, rng):
        def forward(p, inputs):
            return block.apply(
                model_variables(p, batch_stats), inputs, mask, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
            )

        y, vjp, updates = jax.vjp(forward, params, x, has_aux=True)
        d_params, d_x = vjp(cotangent)
        return y, d_params, d_x, updates

    return fwd_bwd


def measure_layer(plan, ceilings: dict | None, warmup: int, reps: int) -> dict:
    """XLA's FLOPs and bytes, the compulsory bytes, the measured time and the roofline of one
    residual block (norm + mixer + output activation, as model.py builds it) at the experiment's
    batch, length and width."""
    import jax
    import jax.numpy as jnp

    from ssm_lra.engine.steps import count_params

    model = plan.model
    block = block_like(model)
    # A pair task runs both documents through the blocks as one batch of 2B sequences.
    batch = plan.trainer["batch_size"] * (2 if getattr(plan.spec, "dual", False) else 1)
    seq_len, width = plan.spec.seq_len, model.d_model
    k_init, k_x, k_ct, k_drop = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(k_x, (batch, seq_len, width), jnp.float32)
    cotangent = jax.random.normal(k_ct, (batch, seq_len, width), jnp.float32)
    mask = jnp.ones((batch, seq_len), jnp.float32)
    variables = jax.jit(lambda r, x, m: block.init(r, x, m, train=False))(k_init, x, mask)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    num_params = count_params(params)

    start = time.perf_counter()
    compiled = jax.jit(layer_fwd_bwd(block)).lower(params, batch_stats, x, mask, cotangent, k_drop).compile()
    compile_s = time.perf_counter() - start
    costs = compiled_costs(compiled)
    times = time_calls(compiled, (params, batch_stats, x, mask, cotangent, k_drop), warmup, reps)
    stats = rl.summarize_times(times)
    result = {
        "batch": batch,
        "seq_len": seq_len,
        "d_model": width,
        "params": num_params,
        "compile_s": compile_s,
        "measured_s": stats,
        "xla": costs,
        "compulsory_bytes": rl.compulsory_layer_bytes(batch, seq_len, width, num_params),
    }
    result.update(layer_rooflines(result, ceilings, plan.trainer))
    return result


def layer_rooflines(layer: dict, ceilings: dict | None, trainer: dict) -> dict:
    """Roofline (XLA's FLOPs and bytes) and floor (XLA's FLOPs, compulsory bytes) against the
    measured ceilings, and the fraction of each that the measured median achieves.

    The compute ceiling is the matrix rate of the model's dense layers (compute_ceiling); the SSM
    work that is elementwise runs on the vector units, far below it, so for such layers the
    compute term is optimistic (a lower bound on time)."""
    flops, xla_bytes = layer["xla"]["flops"], layer["xla"]["bytes_accessed"]
    if xla_bytes is not None:  # XLA counts nothing for Pallas kernels: add what they must move
        xla_bytes += layer["xla"].get("kernel_io_bytes") or 0
    if not ceilings or flops is None or xla_bytes is None:
        return {"roofline": None, "floor": None}
    ceiling_name, peak = compute_ceiling(ceilings, trainer)
    bandwidth = ceilings["bandwidth"]["bytes_per_s"]
    measured = layer["measured_s"]["median"]
    out: dict[str, Any] = {"compute_ceiling": ceiling_name}
    for name, bytes_moved in (("roofline", xla_bytes), ("floor", layer["compulsory_bytes"])):
        bound = rl.roofline(flops, bytes_moved, peak, bandwidth)
        bound["achieved_fraction"] = rl.achieved_fraction(bound["time_s"], measured)
        out[name] = bound
    return out
