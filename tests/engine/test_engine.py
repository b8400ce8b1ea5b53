"""The training engine in-process: non-finite guards, gradient accumulation, multi-host batches,
checkpoint atomicity, signals, config validation and mixed precision."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssm_lra.data.loading import TaskData
from ssm_lra.data.pipeline import batches
from ssm_lra.data.tasks import TaskSpec
from ssm_lra.engine.checkpoint import Checkpoints
from ssm_lra.engine.distributed import check_batch_sizes, host_rows
from ssm_lra.engine.logging import RunLogger
from ssm_lra.engine.loop import NonFiniteLoss, Progress, Schedule, fit, stop_on_signals
from ssm_lra.engine.setup import enable_compilation_cache, validate_trainer
from ssm_lra.engine.steps import finite_and_norm, init_state, init_variables, make_train_step, micro_batches
from ssm_lra.errors import ConfigError
from ssm_lra.model import build_model

REPO = Path(__file__).resolve().parents[2]
SPEC = TaskSpec("toy", seq_len=12, num_classes=3, vocab_size=None, in_channels=2)
MODEL = {
    "name": "s4d", "d_model": 8, "n_layers": 1, "norm": "layer", "prenorm": True, "activation": "glu",
    "dropout": 0.0, "pooling": "mean", "mixer": {"d_state": 4},
}


def toy_examples(n: int, seed: int = 0, poison: tuple = ()) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.normal(size=(int(rng.integers(6, 13)), 2)).astype(np.float32)
        if i in poison:
            x[0, 0] = np.nan
        out.append({"inputs": x, "label": int(rng.integers(0, 3))})
    return out


def toy_state(model, tx, seed=0):
    variables = init_variables(model, SPEC, 4, jax.random.PRNGKey(seed))
    return init_state(variables, tx, jax.random.PRNGKey(seed + 1))


def first_batch(examples, batch_size):
    return next(batches(examples, SPEC, batch_size, train=True, seed=0, threads=0, prefetch=0))


def test_nonfinite_step_changes_nothing_but_the_step():
    model = build_model(MODEL, SPEC)
    tx = optax.adam(1e-2)
    state = toy_state(model, tx)
    before = jax.device_get(state)
    step = make_train_step(model, tx)
    bad = first_batch(toy_examples(8, poison=range(8)), 8)
    state, metrics = step(state, bad)
    assert float(metrics["nonfinite"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 1
    for a, b in zip(jax.tree_util.tree_leaves(before.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves(before.opt_state), jax.tree_util.tree_leaves(state.opt_state)):
        np.testing.assert_array_equal(a, b)
    good = first_batch(toy_examples(8, seed=1), 8)
    state, metrics = step(state, good)
    assert float(metrics["nonfinite"]) == 0.0
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before.params), jax.tree_util.tree_leaves(state.params))]
    assert any(changed)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_finite_and_norm_sees_every_leaf(bad):
    rng = np.random.default_rng(7)
    tree = {"a": rng.normal(size=(3, 4)), "b": {"c": rng.normal(size=(5,)), "d": rng.normal(size=())}}
    finite, norm = finite_and_norm(tree)
    assert bool(finite)
    np.testing.assert_allclose(float(norm), np.sqrt(sum(np.sum(x**2) for x in jax.tree_util.tree_leaves(tree))), rtol=1e-6)
    np.testing.assert_allclose(float(norm), float(optax.tree.norm(tree)), rtol=1e-6)
    for path in (("a",), ("b", "c"), ("b", "d")):
        poisoned = jax.tree_util.tree_map(np.copy, tree)
        leaf = poisoned[path[0]] if len(path) == 1 else poisoned[path[0]][path[1]]
        leaf.reshape(-1)[-1] = bad
        assert not bool(finite_and_norm(poisoned)[0]), path


@pytest.mark.parametrize("k", [4])
def test_gradient_accumulation_matches_one_big_batch(k):
    model = build_model(MODEL, SPEC)  # layer norm, no dropout: micro-batches see what the big batch sees
    tx = optax.sgd(0.5)
    batch = first_batch(toy_examples(16, seed=3), 16)
    big_state, big = make_train_step(model, tx, accumulate=1)(toy_state(model, tx), batch)
    acc_state, acc = make_train_step(model, tx, accumulate=k)(toy_state(model, tx), batch)
    np.testing.assert_allclose(float(acc["loss"]), float(big["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(acc["accuracy"]), float(big["accuracy"]), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(acc_state.params), jax.tree_util.tree_leaves(big_state.params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_micro_batches_partition_the_rows():
    batch = {"x": jnp.arange(12)}
    micro = micro_batches(batch, 3)["x"]
    assert micro.shape == (3, 4)
    assert sorted(np.asarray(micro).reshape(-1).tolist()) == list(range(12))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("processes", [2, 4])
def test_hosts_read_disjoint_shares_that_make_up_the_single_host_batches(train, processes):
    examples = toy_examples(37, seed=5)
    kwargs = dict(train=train, seed=7, epoch=1, threads=0, prefetch=0)
    whole = list(batches(examples, SPEC, 8, **kwargs))
    shares = [list(batches(examples, SPEC, 8, process_index=p, process_count=processes, **kwargs)) for p in range(processes)]
    assert all(len(s) == len(whole) for s in shares)
    for b, batch in enumerate(whole):
        joined = {key: np.concatenate([s[b][key] for s in shares]) for key in batch}
        real = batch["weight"] > 0
        np.testing.assert_array_equal(joined["weight"], batch["weight"])
        for key in ("inputs", "mask", "label"):
            np.testing.assert_array_equal(joined[key][real], batch[key][real])


def test_host_rows_cover_each_batch_once_in_order():
    rows = [host_rows(24, 8, p, 2) for p in range(2)]
    assert rows[0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]
    assert sorted(np.concatenate(rows).tolist()) == list(range(24))


@pytest.mark.parametrize(
    "trainer,devices,message",
    [
        ({"batch_size": 10, "log_every": 1}, 4, "multiple of 4"),
        ({"batch_size": 8, "log_every": 1, "accumulate_grad_batches": 3}, 1, "not divisible by trainer.accumulate_grad_batches"),
        ({"batch_size": 8, "log_every": 1, "accumulate_grad_batches": 2}, 8, "multiple of 16"),
        ({"batch_size": 8, "log_every": 1, "eval_batch_size": 6}, 4, "eval_batch_size=6"),
        ({"batch_size": 8, "log_every": 1, "nonfinite": "ignore"}, 1, "trainer.nonfinite"),
        ({"batch_size": 8, "log_every": 1, "checkpoint_every_minutes": -1}, 1, "checkpoint_every_minutes"),
        ({"batch_size": 8, "log_every": 0}, 1, "trainer.log_every"),
        ({"batch_size": 8, "log_every": 1, "compilation_cache": 3}, 1, "trainer.compilation_cache"),
    ],
)
def test_impossible_trainer_settings_are_one_clear_error(trainer, devices, message):
    with pytest.raises(ConfigError, match=message):
        validate_trainer(trainer, devices=devices)


def test_a_compilation_cache_that_cannot_be_made_is_one_clear_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="cannot create trainer.compilation_cache=.*Not a directory.*null"):
        enable_compilation_cache(str(tmp_path / "a_file" / "compiled"))


def test_batch_sizes_that_fit_pass():
    check_batch_sizes(32, 64, accumulate=2, devices=8, processes=2)
    validate_trainer({"batch_size": 16, "log_every": 5, "accumulate_grad_batches": 2}, devices=8)


def test_bfloat16_runs_dense_layers_in_bf16_and_keeps_parameters_float32():
    f32 = build_model(MODEL, SPEC)
    bf16 = build_model(MODEL, SPEC, precision="bfloat16")
    batch = first_batch(toy_examples(4), 4)
    variables = f32.init(jax.random.PRNGKey(0), batch["inputs"], batch["mask"])
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(bf16.init(jax.random.PRNGKey(0), batch["inputs"], batch["mask"])))
    exact = f32.apply(variables, batch["inputs"], batch["mask"])
    mixed = bf16.apply(variables, batch["inputs"], batch["mask"])
    assert mixed.dtype == jnp.float32
    np.testing.assert_allclose(mixed, exact, atol=0.05, rtol=0.05)
    assert not np.array_equal(mixed, exact)  # bf16 did happen
    jaxpr = str(jax.make_jaxpr(lambda v: bf16.apply(v, batch["inputs"], batch["mask"]))(variables))
    assert "bf16" in jaxpr and "fft" in jaxpr
    with pytest.raises(ConfigError, match="trainer.precision"):
        build_model(MODEL, SPEC, precision="fp8")


def run_fit(tmp_path, examples, nonfinite, max_nonfinite=None):
    model = build_model(MODEL, SPEC)
    trainer = {
        "batch_size": 4, "eval_batch_size": None, "log_every": 100, "epochs": 2, "max_steps": None,
        "limit_train_batches": None, "limit_eval_batches": None, "nonfinite": nonfinite,
        "max_nonfinite_steps": max_nonfinite,
    }
    schedule = Schedule.from_config(trainer, len(examples))
    tx = optax.adam(1e-3)
    data = TaskData(SPEC, {"train": examples, "validation": toy_examples(8, seed=9)}, tmp_path)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    logger = RunLogger(tmp_path, {"name": "none"}, {})
    try:
        return fit(model, tx, toy_state(model, tx), data, trainer, 0, checkpoints, logger, schedule, Progress())
    finally:
        logger.close()
        checkpoints.close()


def test_nonfinite_policy_skip_counts_and_trains_on(tmp_path):
    state, progress = run_fit(tmp_path, toy_examples(16, poison=(5,)), "skip")
    assert progress.nonfinite_loss_steps == 2  # the poisoned example's batch, once per epoch
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(jax.device_get(state.params)))
    assert int(state.step) == 8


def test_nonfinite_policy_stop_names_the_step_and_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"at step [1-4] .*trainer.nonfinite=stop.*Last good checkpoint: none saved yet"):
        run_fit(tmp_path, toy_examples(16, poison=(5,)), "stop")
    # In the second epoch the first epoch's checkpoint is the last good one.
    with pytest.raises(NonFiniteLoss, match=r"at step [5-8] .*checkpoints/latest \(step 4\)"):
        run_fit(tmp_path / "b", toy_examples(16, poison=(5,)), "skip", max_nonfinite=1)


def test_checkpoint_saves_of_one_step_twice_keep_the_newer(tmp_path):
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save("latest", 3, {"w": jnp.zeros(2)}, {"epoch": 0})
    checkpoints.save("latest", 3, {"w": jnp.ones(2)}, {"epoch": 1})
    state, meta = checkpoints.restore("latest", {"w": jnp.zeros(2)})
    assert meta == {"epoch": 1, "step": 3} and checkpoints.latest_step("latest") == 3
    np.testing.assert_array_equal(state["w"], np.ones(2))


def test_a_checkpoint_of_other_shapes_or_names_is_refused_before_reading(tmp_path):
    """The mismatch names the arrays and shapes, and nothing is read: the checkpoint stays usable
    for the state it was written from."""
    from ssm_lra.engine.checkpoint import CheckpointMismatch

    checkpoints = Checkpoints(tmp_path)
    saved = {"w": jnp.ones((2, 3)), "block": {"b": jnp.zeros(4)}}
    checkpoints.save("latest", 3, saved, {"epoch": 0})
    with pytest.raises(CheckpointMismatch, match=r"^w: saved \(2, 3\), the model has \(5, 3\)$"):
        checkpoints.restore("latest", {**saved, "w": jnp.ones((5, 3))})
    with pytest.raises(CheckpointMismatch, match=r"block/c is not in the checkpoint; block/b is in the checkpoint but not"):
        checkpoints.restore("latest", {"w": jnp.ones((2, 3)), "block": {"c": jnp.zeros(4)}})
    many = {f"x{i}": jnp.zeros(1) for i in range(5)}
    with pytest.raises(CheckpointMismatch, match=r"x2 is not in the checkpoint; and 2 more$"):
        checkpoints.restore("latest", {**saved, **many})
    state, meta = checkpoints.restore("latest", saved)
    np.testing.assert_array_equal(state["w"], np.ones((2, 3)))
    assert meta["step"] == 3


CRASHING_SAVE = textwrap.dedent(
    """
    import os, sys
    import jax.numpy as jnp
    from ssm_lra.engine.checkpoint import Checkpoints

    checkpoints = Checkpoints(sys.argv[1])
    checkpoints.save("latest", 10, {"w": jnp.full((256, 256), 1.0)}, {"epoch": 1})
    real_rename = os.rename

    def crash_at_commit(src, dst, *args, **kwargs):
        if "tmp" in os.fspath(src):
            os._exit(137)  # the process dies after writing the new checkpoint, before committing it
        return real_rename(src, dst, *args, **kwargs)

    os.rename = crash_at_commit
    checkpoints.save("latest", 20, {"w": jnp.full((256, 256), 2.0)}, {"epoch": 2})
    """
)


def test_a_crash_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    result = subprocess.run([sys.executable, "-c", CRASHING_SAVE, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 137, result.stderr[-2000:]  # it did crash in the middle of the save
    leftovers = [p for p in (tmp_path / "latest").iterdir() if "tmp" in p.name]
    assert leftovers, "the interrupted save should have left its temporary folder behind"
    state, meta = Checkpoints(tmp_path).restore("latest", {"w": jnp.zeros((256, 256))})
    assert meta["step"] == 10
    np.testing.assert_array_equal(state["w"], np.ones((256, 256)))


def test_signals_become_stop_requests_and_keep_the_previous_handler():
    seen = []

    def previous(signum, frame):
        seen.append(signum)

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        with stop_on_signals() as requested:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert requested == [(signal.SIGUSR1, previous)] and seen == []
        assert signal.getsignal(signal.SIGUSR1) is previous
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_interruption_passes_the_signal_on_and_requeues_only_on_usr_signals(monkeypatch, capsys):
    from ssm_lra import train
    from ssm_lra.engine.loop import Interrupted

    passed = []
    code = train.after_interruption(Interrupted(signal.SIGUSR2, 7, lambda s, f: passed.append(s)), "/run", True)
    assert passed == [signal.SIGUSR2] and code == 128 + signal.SIGUSR2
    requeued = []
    monkeypatch.setattr(train, "requeue_slurm_job", lambda: requeued.append(True) or True)
    assert train.after_interruption(Interrupted(signal.SIGTERM, 7), "/run", True) == 143 and not requeued
    assert train.after_interruption(Interrupted(signal.SIGUSR1, 7), "/run", True) == 128 + signal.SIGUSR1 and requeued
    assert "hydra.run.dir=/run" in capsys.readouterr().err


def test_requeue_asks_scontrol_for_this_job(monkeypatch):
    from ssm_lra import train

    calls = []
    monkeypatch.setattr(train.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    assert not train.requeue_slurm_job({})
    assert train.requeue_slurm_job({"SLURM_JOB_ID": "42"}) and calls == [["scontrol", "requeue", "42"]]
    assert train.requeue_slurm_job({"SLURM_JOB_ID": "42", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "2"})
    assert calls[-1] == ["scontrol", "requeue", "40_2"]


def test_out_of_memory_names_the_settings_that_help():
    from omegaconf import OmegaConf

    from ssm_lra.train import out_of_memory_message

    error = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 44.48GiB\nmore detail")
    cfg = OmegaConf.create({"trainer": {"batch_size": 32}, "model": {"name": "mamba"}})
    message = out_of_memory_message(error, cfg)
    assert "allocate 44.48GiB" in message and "more detail" not in message
    assert "trainer.accumulate_grad_batches=2" in message and "model.mixer.chunk_size" in message
