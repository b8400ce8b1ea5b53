"""Tests of the S4 (DPLR) layer and the HiPPO-LegS DPLR form it is initialized from.

References are independent float64 numpy code: the full N-dimensional real SSM that the stored
conjugate halves stand for, discretized with dense matrices, its kernel by explicit matrix powers,
step-by-step recurrences and O(L^2) convolutions.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_lra.errors import ConfigError
from ssm_lra.ssm import check_mixer_config, mixer_class
from ssm_lra.ssm.hippo import dplr_legs, hippo_legs, hippo_legs_nplr, s4d_legs
from ssm_lra.ssm.s4 import (
    S4,
    SSM_PARAM_NAMES,
    bilinear_state_dplr,
    ctilde_from_c,
    dplr_real_system,
    power_blocks,
    real_pair_basis,
    s4_kernel,
    s4_kernel_powers,
)
from tests.ssm.checks import assert_rel_close, check_layer_gradients

CONF = pathlib.Path(__file__).resolve().parents[2] / "conf" / "model" / "s4.yaml"
KERNEL_ARGS = ("log_dt", "log_A_real", "A_imag", "P", "B", "C")


@pytest.fixture(autouse=True)
def x64():
    """float64 for every test here, restored afterwards so other test modules keep float32."""
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------------------------
# numpy references


def cx(pair):
    return pair[..., 0] + 1j * pair[..., 1]


def full(x):
    """Stored half -> both conjugate halves, in the basis [V, conj V]."""
    return np.concatenate([x, np.conj(x)], axis=-1)


def full_basis(N):
    """[V, conj V]: a unitary basis whose conjugate columns pair up like the stored halves (the
    eigenbasis of LegS's normal part; any such basis gives the same real system up to
    similarity)."""
    V = dplr_legs(N)[3]
    return np.concatenate([V, V.conj()], axis=1)


def real_ssm(params, L):
    """The real N-dimensional bilinear SSM the DPLR parameters represent, for sequence length L.

    Continuous A = W (Lambda - P P^H) W^H, B = W B, Ctilde = Ctilde W^H over both conjugate halves
    (W = [V, conj V]), which are real; then the dense bilinear discretization and
    C = Ctilde (I - Abar^L)^-1. Returns Abar (H, N, N), Bbar (H, N), C (channels, H, N), D (H,)."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    H, N2 = p["A_imag"].shape
    N = 2 * N2
    W = full_basis(N)
    I = np.eye(N)
    lam = full(-np.exp(p["log_A_real"]) + 1j * p["A_imag"])
    P, B, Ct = full(cx(p["P"])), full(cx(p["B"])), full(cx(p["C"]))
    A = np.einsum("ij,hj,kj->hik", W, lam, W.conj()) - np.einsum(
        "ij,hj,hk,lk->hil", W, P, P.conj(), W.conj()
    )
    B = B @ W.T
    Ct = Ct @ W.conj().T
    for name, m in [("A", A), ("B", B), ("Ctilde", Ct)]:
        assert np.max(np.abs(m.imag)) < 1e-12 * max(1.0, np.max(np.abs(m))), f"{name} not real"
    A, B, Ct = A.real, B.real, Ct.real
    dt = np.exp(p["log_dt"])[:, None, None]
    M = np.linalg.inv(I - dt / 2 * A)
    Abar = M @ (I + dt / 2 * A)
    Bbar = np.einsum("hij,hj->hi", M, dt[..., 0] * B)
    C = np.einsum("chi,hij->chj", Ct, np.linalg.inv(I - np.linalg.matrix_power(Abar, L)))
    return Abar, Bbar, C, p["D"]


def dense_kernel(params, L):
    """K[c, h, l] = C Abar^l Bbar with explicit matrix powers."""
    Abar, Bbar, C, _ = real_ssm(params, L)
    ch, H, _ = C.shape
    K = np.zeros((ch, H, L))
    for h in range(H):
        for l in range(L):
            K[:, h, l] = C[:, h] @ np.linalg.matrix_power(Abar[h], l) @ Bbar[h]
    return K


def recurrence(Abar, Bbar, C, u):
    """x_k = Abar x_{k-1} + Bbar u_k, y_k = C x_k. Abar (H,N,N), Bbar (H,N), C (H,N), u (B,L,H)."""
    Bsz, L, H = u.shape
    x = np.zeros((Bsz, H, Abar.shape[-1]))
    y = np.zeros((Bsz, L, H))
    for k in range(L):
        x = np.einsum("hij,bhj->bhi", Abar, x) + Bbar * u[:, k, :, None]
        y[:, k] = np.einsum("hi,bhi->bh", C, x)
    return y


def direct_conv(u, k):
    """Causal y[b, i, h] = sum_{j<=i} k[h, i-j] u[b, j, h], by np.convolve."""
    Bsz, L, H = u.shape
    y = np.zeros((Bsz, L, H))
    for b in range(Bsz):
        for h in range(H):
            y[b, :, h] = np.convolve(u[b, :, h], k[h])[:L]
    return y


def random_variables(H, N, channels, seed):
    """Random float64 params (not the structured init) so every term of the kernel is exercised:
    a full rank-1 P, complex B and Ctilde, and dt large enough that the kernel visibly decays and
    oscillates within a few dozen steps."""
    rng = np.random.default_rng(seed)
    N2 = N // 2
    p = {
        "log_dt": rng.uniform(np.log(1e-2), np.log(0.5), size=(H,)),
        "log_A_real": rng.normal(size=(H, N2)) * 0.7 - 0.5,
        "A_imag": rng.normal(size=(H, N2)) * 3.0,
        "P": rng.normal(size=(H, N2, 2)) * 0.5,
        "B": rng.normal(size=(H, N2, 2)),
        "C": rng.normal(size=(channels, H, N2, 2)) * np.sqrt(0.5),
        "D": rng.normal(size=(H,)),
    }
    return {"params": {k: jnp.asarray(v, dtype=jnp.float64) for k, v in p.items()}}


def make_layer(H, N, bidirectional=False, **kwargs):
    return S4(
        d_model=H, d_state=N, bidirectional=bidirectional, param_dtype=jnp.float64, **kwargs
    )


def init_variables(layer, L, seed=0):
    init = jax.jit(lambda key: layer.init(key, L, method=S4.kernel))
    return init(jax.random.key(seed))


def kernel_of(params, L, kernel=s4_kernel):
    return jax.jit(kernel, static_argnums=6)(*(params[k] for k in KERNEL_ARGS), L)


# ----------------------------------------------------------------------------------------------
# HiPPO-LegS: NPLR and DPLR forms


@pytest.mark.parametrize("N", [4, 16, 64])
def test_nplr_reconstructs_legs_with_normal_part(N):
    A, B = hippo_legs(N)
    S, P, B2 = hippo_legs_nplr(N)
    np.testing.assert_allclose(S - np.outer(P, P), A, rtol=0, atol=1e-12 * N)
    np.testing.assert_array_equal(B2, B)
    # S is normal (what makes its eigendecomposition stable): S S^T = S^T S
    np.testing.assert_allclose(S @ S.T, S.T @ S, rtol=0, atol=1e-10 * N**2)


@pytest.mark.parametrize("N", [2, 4, 8, 16, 32, 64])
def test_dplr_legs_reconstructs_legs(N):
    Lam, Pt, Bt, V = dplr_legs(N)
    assert Lam.shape == Pt.shape == Bt.shape == (N // 2,) and V.shape == (N, N // 2)
    assert all(x.dtype == np.complex128 for x in (Lam, Pt, Bt, V))
    W = np.concatenate([V, V.conj()], axis=1)
    np.testing.assert_allclose(W.conj().T @ W, np.eye(N), rtol=0, atol=1e-12)
    # A = W (Lambda - P~ P~^H) W^H and B = W B~ over both conjugate halves
    A_ref, B_ref = hippo_legs(N)
    A = W @ (np.diag(full(Lam)) - np.outer(full(Pt), full(Pt).conj())) @ W.conj().T
    np.testing.assert_allclose(A, A_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(W @ full(Bt), B_ref, rtol=0, atol=1e-10)
    # P~ and B~ are P and B in the same basis; the kept half has positive imaginary parts
    _, P, B = hippo_legs_nplr(N)
    np.testing.assert_allclose(Pt, V.conj().T @ P, rtol=0, atol=1e-12)
    np.testing.assert_allclose(Bt, V.conj().T @ B, rtol=0, atol=1e-12)
    assert np.all(Lam.imag > 0)
    np.testing.assert_allclose(Lam.real, -0.5, rtol=0, atol=1e-12)
    np.testing.assert_allclose(Lam, s4d_legs(N), rtol=1e-12)  # same spectrum as S4D-LegS


def test_dplr_legs_rejects_odd_state_size():
    with pytest.raises(ValueError, match="even"):
        dplr_legs(7)


# ----------------------------------------------------------------------------------------------
# The kernel


@pytest.mark.parametrize("N", [4, 8, 16])
def test_kernel_matches_dense_bilinear_ssm(N):
    H = 3
    params = random_variables(H, N, channels=2, seed=N)["params"]
    for L in [1, 2, 7, 16, 33, 64]:  # L = 2, 16, 64 include the Nyquist node
        K = kernel_of(params, L)
        assert K.shape == (2, H, L) and K.dtype == jnp.float64
        assert_rel_close(K, dense_kernel(params, L), 1e-11)


@pytest.mark.parametrize("dt_range", [(1e-3, 1e-1), (1e-4, 1e-4)])
def test_kernel_at_legs_init_matches_dense(dt_range):
    # The structured init (LegS A, P, B; Ctilde from a random C), not random parameters.
    H, N = 3, 16
    layer = make_layer(H, N, bidirectional=True, dt_min=dt_range[0], dt_max=dt_range[1])
    params = init_variables(layer, L=40, seed=1)["params"]
    for L in [40, 64]:
        assert_rel_close(kernel_of(params, L), dense_kernel(params, L), 1e-10)


def test_kernel_float32_matches_float64_at_small_dt():
    # Tiny dt puts the Nyquist node at |z| ~ 3e20: it must not overflow in complex64, forward or
    # backward.
    H, N, L = 2, 64, 64
    params = init_variables(make_layer(H, N, dt_min=1e-4, dt_max=1e-4), L=L)["params"]
    params32 = {k: v.astype(jnp.float32) for k, v in params.items()}
    K32 = kernel_of(params32, L)
    assert K32.dtype == jnp.float32
    assert_rel_close(K32, dense_kernel(params, L), 1e-4)
    grads = jax.grad(lambda p: jnp.sum(kernel_of(p, L) ** 2))(params32)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.values())


def test_bilinear_state_and_ctilde_from_c_match_dense_numpy():
    H, N, L = 2, 8, 13
    rng = np.random.default_rng(5)
    p = {k: np.asarray(v) for k, v in random_variables(H, N, channels=2, seed=5)["params"].items()}
    Lam = -np.exp(p["log_A_real"]) + 1j * p["A_imag"]
    P = cx(p["P"])
    dt = np.exp(p["log_dt"])
    Abar = np.asarray(
        jax.jit(bilinear_state_dplr)(jnp.asarray(Lam), jnp.asarray(P), jnp.asarray(dt))
    )
    I = np.eye(N)
    for h in range(H):
        A = np.diag(full(Lam[h])) - np.outer(full(P[h]), full(P[h]).conj())
        ref = np.linalg.inv(I - dt[h] / 2 * A) @ (I + dt[h] / 2 * A)
        np.testing.assert_allclose(Abar[h], ref, rtol=0, atol=1e-13)
    C = rng.normal(size=(2, H, N // 2)) + 1j * rng.normal(size=(2, H, N // 2))
    Abar_L = np.linalg.matrix_power(Abar, L)
    Ct = np.asarray(ctilde_from_c(jnp.asarray(C), jnp.asarray(Abar_L)))
    Ct_full = np.einsum("chm,hmn->chn", full(C), I - Abar_L)
    np.testing.assert_allclose(Ct, Ct_full[..., : N // 2], rtol=0, atol=1e-13)
    # the dropped half is the conjugate of the kept one
    np.testing.assert_allclose(Ct_full[..., N // 2 :], Ct.conj(), rtol=0, atol=1e-13)


def test_ctilde_init_is_set_from_a_standard_complex_normal_C():
    H, N, L = 64, 16, 50
    layer = make_layer(H, N, bidirectional=True)
    params = init_variables(layer, L=L, seed=2)["params"]
    _, _, C, _ = real_ssm(params, L)  # C = Ctilde (I - Abar^L)^-1 in the real basis
    C = np.einsum("chi,ij->chj", C, full_basis(N))[..., : N // 2]  # back to the eigenbasis half
    assert abs(C.real.var() - 0.5) < 0.1 and abs(C.imag.var() - 0.5) < 0.1
    assert abs(C.mean()) < 0.1
    # and Ctilde = C (I - Abar^L) is not that C (the conversion did happen)
    Ct = cx(np.asarray(params["C"]))
    assert np.linalg.norm(Ct - C) > 0.3 * np.linalg.norm(C)


# ----------------------------------------------------------------------------------------------
# The kernel by matrix powers


@pytest.mark.parametrize("L", [1, 2, 3, 7, 16, 33, 64, 100])
def test_power_blocks_cover_the_length(L):
    T, Q = power_blocks(L)
    assert T & (T - 1) == 0 and (Q - 1) * T < L <= Q * T and T <= 2 * np.sqrt(L) + 1


def test_real_pair_basis_makes_the_system_real():
    N2 = 3
    U = real_pair_basis(N2)
    np.testing.assert_allclose(U @ U.conj().T, np.eye(2 * N2), rtol=0, atol=1e-15)
    x = np.random.default_rng(0).normal(size=N2) + 1j * np.random.default_rng(1).normal(size=N2)
    np.testing.assert_allclose(U @ full(x), np.sqrt(2) * np.concatenate([x.real, -x.imag]), atol=1e-15)
    H, N = 2, 2 * N2
    params = random_variables(H, N, channels=2, seed=3)["params"]
    Abar, Bbar, Ct = dplr_real_system(
        -jnp.exp(params["log_A_real"]) + 1j * params["A_imag"], cx(params["P"]), cx(params["B"]),
        cx(params["C"]), jnp.exp(params["log_dt"]),
    )
    assert Abar.dtype == Bbar.dtype == Ct.dtype == jnp.float64
    # similar to the dense real system of the reference (another real basis): same spectrum
    Abar_ref = real_ssm(params, L=5)[0]
    for h in range(H):
        ev = np.sort_complex(np.linalg.eigvals(np.asarray(Abar[h])))
        np.testing.assert_allclose(ev, np.sort_complex(np.linalg.eigvals(Abar_ref[h])), atol=1e-12)


def test_kernel_by_powers_matches_dense_bilinear_ssm():
    H, N = 3, 8
    params = random_variables(H, N, channels=2, seed=48)["params"]
    for L in [1, 16, 33, 100]:  # no squaring; T Q = L; T Q > L with several binary digits
        K = kernel_of(params, L, s4_kernel_powers)
        assert K.shape == (2, H, L) and K.dtype == jnp.float64
        assert_rel_close(K, dense_kernel(params, L), 1e-11)


def test_kernel_by_powers_float32_and_gradients_match_the_cauchy_route():
    # At the LegS init with N 64 and a long L, float32 against float64; and the gradients of both
    # routes agree in float64 (the same function of the parameters).
    H, N, L = 2, 64, 1000
    params = init_variables(make_layer(H, N, bidirectional=True, dt_min=1e-4), L=L, seed=4)["params"]
    ref = np.asarray(kernel_of(params, L))
    params32 = {k: v.astype(jnp.float32) for k, v in params.items()}
    K32 = kernel_of(params32, L, s4_kernel_powers)
    assert K32.dtype == jnp.float32
    assert_rel_close(K32, ref, 2e-5)
    cot = jnp.asarray(np.random.default_rng(4).normal(size=ref.shape))

    def grads(kernel):
        loss = lambda p: jnp.sum(kernel_of(p, L, kernel) * cot)
        return jax.grad(loss)({k: params[k] for k in KERNEL_ARGS})

    g_cauchy, g_powers = grads(s4_kernel), grads(s4_kernel_powers)
    for k in KERNEL_ARGS:
        assert_rel_close(g_powers[k], g_cauchy[k], 1e-9)


# ----------------------------------------------------------------------------------------------
# The layer


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("L", [7, 16, 33])
def test_layer_is_convolution_with_kernel_plus_skip(L, bidirectional):
    H, N = 3, 8
    layer = make_layer(H, N, bidirectional=bidirectional)
    variables = random_variables(H, N, channels=2 if bidirectional else 1, seed=L)
    u = np.random.default_rng(L).normal(size=(2, L, H))
    y = jax.jit(layer.apply)(variables, jnp.asarray(u))
    assert y.shape == u.shape and y.dtype == jnp.float64
    K = np.asarray(kernel_of(variables["params"], L))
    ref = direct_conv(u, K[0]) + np.asarray(variables["params"]["D"]) * u
    if bidirectional:
        ref = ref + direct_conv(u[:, ::-1], K[1])[:, ::-1]
    assert_rel_close(y, ref, 1e-12)


def test_bidirectional_is_forward_plus_reversed_run():
    H, N, L = 3, 8, 21
    variables = random_variables(H, N, channels=2, seed=11)
    p = variables["params"]
    fwd = {"params": {**p, "C": p["C"][:1]}}
    bwd = {"params": {**p, "C": p["C"][1:], "D": jnp.zeros_like(p["D"])}}
    u = jnp.asarray(np.random.default_rng(11).normal(size=(2, L, H)))
    causal = make_layer(H, N)
    y = jax.jit(make_layer(H, N, bidirectional=True).apply)(variables, u)
    run = jax.jit(causal.apply)
    ref = run(fwd, u) + run(bwd, u[:, ::-1])[:, ::-1]
    assert_rel_close(y, ref, 1e-12)


@pytest.mark.parametrize("kernel_method", ["cauchy", "powers"])
@pytest.mark.parametrize("L", [16, 33])
def test_layer_matches_real_recurrence(L, kernel_method):
    H, N = 3, 8
    variables = random_variables(H, N, channels=2, seed=20 + L)
    u = np.random.default_rng(L).normal(size=(2, L, H))
    layer = make_layer(H, N, bidirectional=True, kernel_method=kernel_method)
    y = jax.jit(layer.apply)(variables, jnp.asarray(u))
    Abar, Bbar, C, D = real_ssm(variables["params"], L)
    ref = recurrence(Abar, Bbar, C[0], u) + recurrence(Abar, Bbar, C[1], u[:, ::-1])[:, ::-1]
    assert_rel_close(y, ref + D * u, 1e-10)


def test_parameters_names_shapes_and_init():
    H, N = 5, 16
    layer = make_layer(H, N, bidirectional=True)
    p = init_variables(layer, L=8)["params"]
    assert SSM_PARAM_NAMES == frozenset({"log_dt", "log_A_real", "A_imag", "P", "B"})
    assert S4.SSM_PARAM_NAMES == SSM_PARAM_NAMES and mixer_class("s4") is S4
    shapes = {k: v.shape for k, v in p.items()}
    assert shapes == {
        "log_dt": (H,),
        "log_A_real": (H, N // 2),
        "A_imag": (H, N // 2),
        "P": (H, N // 2, 2),
        "B": (H, N // 2, 2),
        "C": (2, H, N // 2, 2),
        "D": (H,),
    }
    assert all(v.dtype == jnp.float64 for v in p.values())
    dt = np.exp(np.asarray(p["log_dt"]))
    assert np.all((dt >= 1e-3) & (dt <= 1e-1))
    Lam0, P0, B0, _ = dplr_legs(N)
    Lam = -np.exp(np.asarray(p["log_A_real"])) + 1j * np.asarray(p["A_imag"])
    np.testing.assert_allclose(Lam, np.broadcast_to(Lam0, (H, N // 2)), rtol=1e-14)
    np.testing.assert_allclose(cx(np.asarray(p["P"])), np.broadcast_to(P0, (H, N // 2)), rtol=1e-14)
    np.testing.assert_allclose(cx(np.asarray(p["B"])), np.broadcast_to(B0, (H, N // 2)), rtol=1e-14)
    assert init_variables(make_layer(H, N), L=8)["params"]["C"].shape == (1, H, N // 2, 2)


def test_float32_default_and_input_dtype_preserved():
    H, N, L = 3, 8, 16
    layer = S4(d_model=H, d_state=N, bidirectional=True)
    u = jnp.asarray(np.random.default_rng(0).normal(size=(2, L, H)), jnp.float32)
    variables = jax.jit(lambda key: layer.init(key, u))(jax.random.key(0))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    y = jax.jit(layer.apply)(variables, u)
    assert y.dtype == jnp.float32
    Abar, Bbar, C, D = real_ssm(variables["params"], L)
    u64 = np.asarray(u, np.float64)
    ref = recurrence(Abar, Bbar, C[0], u64) + recurrence(Abar, Bbar, C[1], u64[:, ::-1])[:, ::-1]
    assert_rel_close(y, ref + D * u64, 1e-4)


def test_gradients_match_finite_differences():
    H, N, L = 2, 4, 9
    layer = make_layer(H, N, bidirectional=True)
    variables = random_variables(H, N, channels=2, seed=7)
    check_layer_gradients(layer, variables["params"], H, L)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"d_state": 7}, "even"),
        ({"d_state": 0}, "even"),
        ({"dt_min": 0.1, "dt_max": 0.01}, "dt_min"),
        ({"dt_min": 0.0}, "dt_min"),
        ({"kernel_method": "vandermonde"}, "kernel_method"),
    ],
)
def test_invalid_options_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S4(d_model=2, **kwargs)
    with pytest.raises(ConfigError, match=match):
        check_mixer_config("s4", 2, kwargs)


def test_model_config_is_valid_for_the_layer():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(CONF))
    assert cfg["name"] == "s4" and cfg["activation"] == "glu" and cfg["pooling"] == "mean"
    mixer = cfg["mixer"]
    assert mixer["bidirectional"] is True and mixer["d_state"] == 64
    assert (mixer["dt_min"], mixer["dt_max"]) == (1e-3, 1e-1)
    check_mixer_config("s4", cfg["d_model"], mixer)
    with pytest.raises(ConfigError, match="unknown key"):
        check_mixer_config("s4", cfg["d_model"], {**mixer, "ssm_init": "legs"})
