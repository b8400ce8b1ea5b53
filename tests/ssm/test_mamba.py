"""Tests of the Mamba mixer: causal conv, selective scan, the whole block, chunking, the reversed
branch, padding, parameters and options.

References are plain float64 numpy code stepping through time one position at a time.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from ssm_lra.engine.optim import param_labels
from ssm_lra.errors import ConfigError
from ssm_lra.ssm import check_mixer_config, mixer_class
from ssm_lra.ssm.mamba import (
    SSM_PARAM_NAMES,
    Mamba,
    causal_depthwise_conv,
    batched_selective_scan,
    inverse_softplus,
    selective_scan,
)
from ssm_lra.ssm.mamba_kernel import selective_scan_fused
from tests.ssm.checks import assert_rel_close, check_layer_gradients

CONF = Path(__file__).resolve().parents[2] / "conf" / "model" / "mamba.yaml"


@pytest.fixture(autouse=True)
def x64():
    """float64 for every test here, restored afterwards so other test modules keep float32."""
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------------------------
# numpy references


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_softplus(x):
    return np.log1p(np.exp(x))


def loop_conv(x, w, b):
    """x (L, E), w (K, E), b (E,): y_t = b + sum_k w[k] x_{t-K+1+k}, zeros before the start."""
    L, K = x.shape[0], w.shape[0]
    y = np.zeros_like(x)
    for t in range(L):
        y[t] = b
        for k in range(K):
            s = t - (K - 1) + k
            if s >= 0:
                y[t] += w[k] * x[s]
    return y


def loop_selective_scan(u, dt, A, B, C, D):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t h_t + D u_t, one step at a time.
    u, dt (L, E); A (E, N); B, C (L, N); D (E,)."""
    L, E = u.shape
    h = np.zeros(A.shape)
    y = np.zeros((L, E))
    for t in range(L):
        for e in range(E):
            h[e] = np.exp(dt[t, e] * A[e]) * h[e] + dt[t, e] * B[t] * u[t, e]
            y[t, e] = np.dot(C[t], h[e]) + D[e] * u[t, e]
    return y


def ref_branch(p, x):
    """One direction (conv, SiLU, selective SSM) for one unpadded sequence x (L, E), stepwise."""
    L, _ = x.shape
    R = p["dt_proj"]["kernel"].shape[0]
    N = p["A_log"].shape[1]
    K = p["conv_weight"].shape[0]
    A = -np.exp(p["A_log"])
    h = np.zeros(A.shape)
    y = np.zeros_like(x)
    for t in range(L):
        conv = p["conv_bias"].copy()
        for k in range(K):
            if t - (K - 1) + k >= 0:
                conv += p["conv_weight"][k] * x[t - (K - 1) + k]
        xt = np_silu(conv)
        proj = xt @ p["x_proj"]["kernel"]
        dt = np_softplus(proj[:R] @ p["dt_proj"]["kernel"] + p["dt_bias"])
        Bt, Ct = proj[R : R + N], proj[R + N :]
        h = np.exp(dt[:, None] * A) * h + (dt * xt)[:, None] * Bt[None, :]
        y[t] = h @ Ct + p["D"] * xt
    return y


def ref_block(params, u, bidirectional):
    """The whole block for one unpadded sequence u (L, H)."""
    x, z = np.split(u @ params["in_proj"]["kernel"], 2, axis=-1)
    y = ref_branch(params["ssm"], x)
    if bidirectional:
        y = 0.5 * (y + ref_branch(params["ssm_backward"], x[::-1])[::-1])
    return (y * np_silu(z)) @ params["out_proj"]["kernel"]


# ----------------------------------------------------------------------------------------------
# helpers


def make_layer(H=4, **kwargs):
    kwargs = {"d_state": 3, "expand": 2, "d_conv": 3, "dt_rank": 2, "param_dtype": jnp.float64, **kwargs}
    return Mamba(d_model=H, **kwargs)


def random_params(layer, seed):
    """Random float64 params (not the init) so every term is exercised: dt ~ 0.1 .. 1 so states
    decay visibly within the sequence, A spread around -1, O(1) projections."""
    shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((1, 5, layer.d_model)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "A_log":
            return rng.normal(size=leaf.shape) * 0.5
        if name == "dt_bias":
            return inverse_softplus(rng.uniform(0.1, 1.0, size=leaf.shape))
        if name == "D":
            return rng.normal(size=leaf.shape)
        if name in ("conv_weight", "conv_bias"):
            return rng.normal(size=leaf.shape) * 0.7
        return rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])  # Dense kernels

    params = jax.tree_util.tree_map_with_path(fill, shapes["params"])
    return {"params": jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)}


def to_numpy(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# ----------------------------------------------------------------------------------------------
# pure functions


@pytest.mark.parametrize("K", [1, 3, 4])
def test_causal_depthwise_conv_matches_loop(K):
    rng = np.random.default_rng(K)
    x = rng.normal(size=(2, 9, 3))
    w, b = rng.normal(size=(K, 3)), rng.normal(size=3)
    y = jax.jit(causal_depthwise_conv)(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
    assert y.shape == x.shape and y.dtype == jnp.float64
    for i in range(2):
        np.testing.assert_allclose(y[i], loop_conv(x[i], w, b), rtol=1e-13, atol=1e-13)


def test_selective_scan_matches_loop():
    rng = np.random.default_rng(0)
    L, E, N = 23, 3, 4
    u = rng.normal(size=(L, E))
    dt = rng.uniform(0.01, 1.0, size=(L, E))
    A = -np.exp(rng.normal(size=(E, N)) * 0.5)
    B, C = rng.normal(size=(L, N)), rng.normal(size=(L, N))
    D = rng.normal(size=E)
    ref = loop_selective_scan(u, dt, A, B, C, D)
    args = tuple(jnp.asarray(v) for v in (u, dt, A, B, C, D))
    fn = jax.jit(selective_scan, static_argnames="chunk_size")
    for chunk_size in [None, 1, 5, 23, 40]:
        y = fn(*args, chunk_size=chunk_size)
        assert y.shape == (L, E) and y.dtype == jnp.float64
        assert_rel_close(y, ref, 1e-12)


# ----------------------------------------------------------------------------------------------
# the layer


@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_matches_stepwise_reference(bidirectional, chunk_size):
    H, L = 4, 17
    layer = make_layer(H, bidirectional=bidirectional, chunk_size=chunk_size)
    variables = random_params(layer, seed=1)
    u = np.random.default_rng(2).normal(size=(2, L, H))
    y = jax.jit(layer.apply)(variables, jnp.asarray(u))
    assert y.shape == u.shape and y.dtype == jnp.float64
    p = to_numpy(variables["params"])
    for i in range(2):
        assert_rel_close(y[i], ref_block(p, u[i], bidirectional), 1e-11)


def test_chunked_layer_and_gradients_equal_unchunked():
    H, L = 4, 30
    u = jnp.asarray(np.random.default_rng(3).normal(size=(2, L, H)))
    # Outputs, bidirectional: 7 leaves a partial last chunk, 64 > L is a single chunk.
    full = make_layer(H, bidirectional=True)
    variables = random_params(full, seed=3)
    y = jax.jit(full.apply)(variables, u)
    for chunk_size in [7, 64]:
        chunked = make_layer(H, bidirectional=True, chunk_size=chunk_size)
        assert_rel_close(jax.jit(chunked.apply)(variables, u), y, 1e-12)

    # Gradients wrt every parameter through the rematerialized chunks (one direction: the
    # backward branch is the same code on a flipped input).
    def value_and_grad(layer, variables):
        loss = lambda v: jnp.sum(jnp.sin(layer.apply(v, u)))
        return jax.jit(jax.value_and_grad(loss))(variables)

    variables = random_params(make_layer(H), seed=3)
    value, grads = value_and_grad(make_layer(H), variables)
    value_c, grads_c = value_and_grad(make_layer(H, chunk_size=7), variables)
    np.testing.assert_allclose(value_c, value, rtol=1e-12)
    for g_c, g in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads)):
        assert_rel_close(g_c, g, 1e-10)


def test_bidirectional_is_mean_of_forward_and_reversed_runs():
    H, L = 4, 13
    bi = make_layer(H, bidirectional=True)
    uni = make_layer(H, bidirectional=False)
    variables = random_params(bi, seed=4)
    p = variables["params"]
    forward = {"params": {"in_proj": p["in_proj"], "out_proj": p["out_proj"], "ssm": p["ssm"]}}
    backward = {"params": {"in_proj": p["in_proj"], "out_proj": p["out_proj"], "ssm": p["ssm_backward"]}}
    u = jnp.asarray(np.random.default_rng(4).normal(size=(3, L, H)))
    run_uni = jax.jit(uni.apply)
    y = jax.jit(bi.apply)(variables, u)
    # The gate and out-projection act per position and linearly, so the mean before the gate is
    # the mean of two unidirectional blocks, the second one run on the reversed sequence.
    expected = 0.5 * (run_uni(forward, u) + jnp.flip(run_uni(backward, jnp.flip(u, 1)), 1))
    assert_rel_close(y, expected, 1e-12)
    assert np.max(np.abs(y - run_uni(forward, u))) > 1e-3  # the reversed branch does something


@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_reach_real_positions(bidirectional, chunk_size):
    # Real positions equal the stepwise reference run on the unpadded sequence, whether the
    # padding holds zeros (the backbone's promise) or garbage.
    H, L = 4, 14
    lengths = [14, 9, 3]
    layer = make_layer(H, bidirectional=bidirectional, chunk_size=chunk_size)
    variables = random_params(layer, seed=5)
    rng = np.random.default_rng(5)
    u = rng.normal(size=(3, L, H))
    mask = (np.arange(L)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)
    garbage = rng.normal(size=u.shape) * 10
    run = jax.jit(layer.apply)
    y_zero = run(variables, jnp.asarray(u * mask[..., None]), mask=jnp.asarray(mask))
    y_garbage = run(variables, jnp.asarray(np.where(mask[..., None] > 0, u, garbage)), mask=jnp.asarray(mask))
    p = to_numpy(variables["params"])
    for i, n in enumerate(lengths):
        alone = ref_block(p, u[i, :n], bidirectional)
        assert_rel_close(y_zero[i, :n], alone, 1e-11)
        assert_rel_close(y_garbage[i, :n], alone, 1e-11)
    if bidirectional and chunk_size:  # a boolean mask works the same
        y_bool = run(variables, jnp.asarray(u * mask[..., None]), mask=jnp.asarray(mask > 0))
        np.testing.assert_array_equal(y_bool, y_zero)


# ----------------------------------------------------------------------------------------------
# the fused kernel (scan "fused"), run here through Pallas' interpreter


def random_scan_inputs(Bz, L, E, N, seed):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(Bz, L, E)),
        rng.uniform(0.01, 1.0, size=(Bz, L, E)),
        -np.exp(rng.normal(size=(E, N)) * 0.5),
        rng.normal(size=(Bz, L, N)),
        rng.normal(size=(Bz, L, N)),
        rng.normal(size=E),
    )


def test_fused_scan_matches_loop_and_its_gradients_match_xla():
    # L 19 (not a multiple of the 8-step chunk), E 5 and N 3 (padded to 8 and 4): the padding
    # must change nothing, forward or backward.
    u, dt, A, B, C, D = random_scan_inputs(2, 19, 5, 3, seed=6)
    args = tuple(jnp.asarray(v) for v in (u, dt, A, B, C, D))
    cotangent = jnp.asarray(np.random.default_rng(7).normal(size=(2, 19, 5)))

    @jax.jit
    def fused_value_and_grads(*args):
        # The kernel's output and the gradients of sum(y * cotangent) from one program: the
        # interpreted kernels are slow to compile, and the gradient's program holds the forward.
        # (In float64, batched_selective_scan's fused route is selective_scan_fused(..., interpret=True)
        # on the arguments as given.)
        y, pullback = jax.vjp(lambda *a: batched_selective_scan(*a, scan="fused_interpret"), *args)
        return y, pullback(cotangent)

    y, fused_grads = fused_value_and_grads(*args)
    assert y.shape == (2, 19, 5) and y.dtype == jnp.float64
    for i in range(2):
        assert_rel_close(y[i], loop_selective_scan(u[i], dt[i], A, B[i], C[i], D), 1e-12)
    xla_loss = lambda *a: jnp.sum(batched_selective_scan(*a, scan="xla") * cotangent)
    xla_grads = jax.jit(jax.grad(xla_loss, argnums=tuple(range(6))))(*args)
    assert len(fused_grads) == len(xla_grads) == 6
    for g_fused, g_xla in zip(fused_grads, xla_grads):
        assert g_fused.shape == g_xla.shape
        assert_rel_close(g_fused, g_xla, 1e-11)


def test_fused_layer_with_padding_matches_stepwise_reference():
    H, L = 4, 14
    lengths = [14, 9]
    layer = make_layer(H, bidirectional=True, scan="fused_interpret")
    variables = random_params(layer, seed=8)
    u = np.random.default_rng(8).normal(size=(2, L, H))
    mask = (np.arange(L)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)
    y = jax.jit(layer.apply)(variables, jnp.asarray(u * mask[..., None]), mask=jnp.asarray(mask))
    p = to_numpy(variables["params"])
    for i, n in enumerate(lengths):
        assert_rel_close(y[i, :n], ref_block(p, u[i, :n], True), 1e-11)


def test_fused_kernels_lower_to_triton_for_cuda():
    # Without a GPU, lowering for CUDA still runs Pallas' Triton lowering of both kernels, so an
    # operation Triton cannot express fails here rather than on a lent GPU.
    from jax import export

    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    shapes = (f32(2, 40, 48), f32(2, 40, 48), f32(48, 16), f32(2, 40, 16), f32(2, 40, 16), f32(48))
    loss = lambda *a: jnp.sum(selective_scan_fused(*a) ** 2)
    grad = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6))))
    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    module = export.export(grad, platforms=["cuda"], disabled_checks=[triton])(*shapes).mlir_module()
    assert module.count("xla.gpu.triton") >= 2
    assert "selective_scan_forward" in module and "selective_scan_backward" in module


def test_parameters_names_shapes_and_init():
    H, N, E = 40, 16, 80
    layer = Mamba(d_model=H, bidirectional=True, param_dtype=jnp.float64)
    params = jax.jit(layer.init)(jax.random.key(0), jnp.zeros((1, 2, H)))["params"]
    R = math.ceil(H / 16)
    branch = {
        "conv_weight": (4, E),
        "conv_bias": (E,),
        "x_proj": {"kernel": (E, R + 2 * N)},
        "dt_proj": {"kernel": (R, E)},
        "dt_bias": (E,),
        "A_log": (E, N),
        "D": (E,),
    }
    expected = {
        "in_proj": {"kernel": (H, 2 * E)},
        "ssm": branch,
        "ssm_backward": branch,
        "out_proj": {"kernel": (E, H)},
    }
    assert jax.tree.map(lambda x: x.shape, params) == expected
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(params))
    for name in ("ssm", "ssm_backward"):
        p = params[name]
        A = -np.exp(p["A_log"])
        np.testing.assert_allclose(A, -np.broadcast_to(np.arange(1, N + 1), (E, N)), rtol=1e-14)
        np.testing.assert_array_equal(p["D"], 1.0)
        dt = np.asarray(jax.nn.softplus(p["dt_bias"]))
        assert np.all((dt >= 1e-3 * (1 - 1e-12)) & (dt <= 1e-1 * (1 + 1e-12)))
        assert np.log(dt).std() > 0.5  # spread over the log range, not a constant
        assert np.all(np.abs(p["dt_proj"]["kernel"]) <= R**-0.5)
    assert not np.allclose(params["ssm"]["dt_bias"], params["ssm_backward"]["dt_bias"])
    assert "dt_proj" in params["ssm"] and Mamba(d_model=16).d_inner == 32
    small = Mamba(d_model=16, dt_rank=3)
    p16 = jax.eval_shape(small.init, jax.random.key(0), jnp.zeros((1, 4, 16)))["params"]
    assert p16["ssm"]["dt_proj"]["kernel"].shape == (3, 32) and "ssm_backward" not in p16


def test_ssm_param_names_and_optimizer_groups():
    assert SSM_PARAM_NAMES == frozenset({"A_log", "dt_bias"})
    assert mixer_class("mamba") is Mamba
    assert Mamba.SSM_PARAM_NAMES is SSM_PARAM_NAMES
    assert not SSM_PARAM_NAMES & {"kernel", "bias", "scale", "embedding"}  # Dense / norm leaves
    layer = make_layer(4, bidirectional=True)
    params = jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((1, 5, 4)))["params"]
    labels = param_labels(params, SSM_PARAM_NAMES)
    for branch in ("ssm", "ssm_backward"):
        assert labels[branch]["A_log"] == labels[branch]["dt_bias"] == "ssm"
        assert labels[branch]["D"] == labels[branch]["conv_bias"] == "no_decay"
        assert labels[branch]["conv_weight"] == "decay"
        assert labels[branch]["x_proj"]["kernel"] == labels[branch]["dt_proj"]["kernel"] == "decay"
    assert labels["in_proj"]["kernel"] == labels["out_proj"]["kernel"] == "decay"


def test_float32_default_and_input_dtype_preserved():
    H, L = 4, 11
    layer = Mamba(d_model=H, d_state=4, bidirectional=True, chunk_size=4)
    u = jnp.asarray(np.random.default_rng(0).normal(size=(2, L, H)), jnp.float32)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), u)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(shapes))
    variables = jax.tree.map(lambda x: x.astype(jnp.float32), random_params(layer, seed=0))
    y = jax.jit(layer.apply)(variables, u)
    assert y.dtype == jnp.float32
    p = to_numpy(variables["params"])
    for i in range(2):
        assert_rel_close(y[i], ref_block(p, np.asarray(u[i], np.float64), True), 1e-5)


def test_gradients_match_finite_differences():
    H, L = 2, 7
    layer = make_layer(H, d_state=2, expand=1, dt_rank=1, bidirectional=True, chunk_size=3)
    variables = random_params(layer, seed=7)
    check_layer_gradients(layer, variables["params"], H, L)


# ----------------------------------------------------------------------------------------------
# options and config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"d_state": 0}, "d_state"),
        ({"expand": 1.5}, "expand"),
        ({"d_conv": 0}, "d_conv"),
        ({"dt_rank": "full"}, "dt_rank"),
        ({"dt_rank": 0}, "dt_rank"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
        ({"dt_min": 0.0}, "dt_min"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": "64"}, "chunk_size"),
        ({"bidirectional": "yes"}, "bidirectional"),
        ({"d_state": True}, "d_state"),
        ({"scan": "pallas"}, "scan"),
    ],
)
def test_invalid_options_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mamba(d_model=8, **kwargs)


@pytest.mark.parametrize("available, kernel_calls", [(False, []), (True, [False, False])])
def test_auto_scan_runs_the_fused_kernel_where_it_compiles_and_xla_elsewhere(monkeypatch, available, kernel_calls):
    import ssm_lra.ssm.mamba as mamba
    import ssm_lra.ssm.pallas_common as pallas_common

    params = random_params(make_layer(4, bidirectional=True), seed=6)
    u = jnp.asarray(np.random.default_rng(6).normal(size=(1, 5, 4)))
    run = lambda scan: jax.jit(make_layer(4, bidirectional=True, scan=scan).apply)(params, u)
    calls = []

    def interpreted_kernel(*args, interpret):
        calls.append(interpret)
        return selective_scan_fused(*args, interpret=True)  # the kernel cannot compile on a CPU

    monkeypatch.setattr(mamba, "selective_scan_fused", interpreted_kernel)
    monkeypatch.setattr(pallas_common, "fused_scan_available", lambda: available)
    auto = run("auto")
    assert calls == kernel_calls  # one compiled kernel per direction, or none
    np.testing.assert_allclose(auto, run("xla"), rtol=1e-10)  # the same output either way


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the check is for machines without a GPU")
def test_fused_scan_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="GPU kernel.*use scan 'xla'"):
        Mamba(d_model=8, scan="fused")
    with pytest.raises(ConfigError, match="GPU kernel"):
        check_mixer_config("mamba", 8, {"scan": "fused"})


def test_wrong_input_width_raises():
    layer = Mamba(d_model=8)
    with pytest.raises(ValueError, match="8"):
        layer.init(jax.random.key(0), jnp.zeros((1, 4, 6)))


def test_config_file_builds_and_unknown_keys_fail():
    cfg = yaml.safe_load(CONF.read_text())
    assert cfg["name"] == "mamba" and cfg["activation"] == "none"
    assert cfg["mixer"]["dt_rank"] == "auto" and cfg["mixer"]["chunk_size"] is None
    check_mixer_config("mamba", cfg["d_model"], cfg["mixer"])
    layer = Mamba(d_model=cfg["d_model"], **cfg["mixer"])
    assert layer.bidirectional and layer.d_inner == 2 * cfg["d_model"]
    with pytest.raises(ConfigError, match="d_conv"):
        check_mixer_config("mamba", 16, {**cfg["mixer"], "conv_size": 4})
    with pytest.raises(ConfigError, match="chunk_size"):
        check_mixer_config("mamba", 16, {**cfg["mixer"], "chunk_size": -1})
