"""Tests of the HiPPO inits, diagonal discretizations, FFT convolutions and the S4D layer.

References are independent float64 numpy code: closed forms written with loops, dense matrix
definitions, O(L^2) convolutions and step-by-step recurrences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_lra.ssm.chunked_conv import chunk_toeplitz, chunked_ssm_conv
from ssm_lra.ssm.conv import (
    bidirectional_fft_conv,
    causal_fft_conv,
    fft_length,
    vandermonde_kernel,
    with_skip,
)
from ssm_lra.ssm.diagonal_scan import batch_cross_correlation, diagonal_scan_conv
from ssm_lra.ssm.discretize import DISCRETIZATIONS, discretize_bilinear, discretize_zoh
from ssm_lra.ssm.hippo import (
    diagonal_init,
    hippo_legs,
    hippo_legs_normal_eig,
    hippo_legs_nplr,
)
from ssm_lra.ssm import s4d as s4d_module
from ssm_lra.ssm.s4d import (
    AUTO_CHUNK,
    AUTO_CHUNKED_MAX_STATE,
    S4D,
    SSM_PARAM_NAMES,
    complex_normal_init,
    resolve_conv,
)
from tests.ssm.checks import assert_rel_close, check_layer_gradients, np_discretize


@pytest.fixture(autouse=True)
def x64():
    """float64 for every test here, restored afterwards so other test modules keep float32."""
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------------------------
# numpy references


def legs_by_loops(N):
    A = np.zeros((N, N))
    B = np.zeros(N)
    for n in range(N):
        B[n] = np.sqrt(2 * n + 1)
        for k in range(N):
            if n > k:
                A[n, k] = -np.sqrt(2 * n + 1) * np.sqrt(2 * k + 1)
            elif n == k:
                A[n, k] = -(n + 1)
    return A, B


def direct_causal_conv(u, k):
    """u (B, L, H), k (H, L): y[b, i, h] = sum_{j<=i} k[h, i-j] u[b, j, h]."""
    Bsz, L, H = u.shape
    y = np.zeros((Bsz, L, H))
    for i in range(L):
        for j in range(i + 1):
            y[:, i, :] += k[:, i - j] * u[:, j, :]
    return y


def direct_anticausal_conv(u, k):
    """y[b, i, h] = sum_{j>=i} k[h, j-i] u[b, j, h] (the SSM run on the reversed sequence)."""
    Bsz, L, H = u.shape
    y = np.zeros((Bsz, L, H))
    for i in range(L):
        for j in range(i, L):
            y[:, i, :] += k[:, j - i] * u[:, j, :]
    return y


def unpack(params):
    """S4D params -> numpy complex (dt (H,1), Lambda (H,N2), B (H,N2), C (ch,H,N2), D (H,))."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    dt = np.exp(p["log_dt"])[:, None]
    Lam = -np.exp(p["log_A_real"]) + 1j * p["A_imag"]
    B = p["B"][..., 0] + 1j * p["B"][..., 1]
    C = p["C"][..., 0] + 1j * p["C"][..., 1]
    return dt, Lam, B, C, p["D"]


def recurrence(Abar, Bbar, C, u):
    """Step the discrete SSM: x_k = Abar x_{k-1} + Bbar u_k, y_k = 2 Re(sum_n C_n x_k,n).

    Abar, Bbar, C: (H, N2); u (B, L, H) -> y (B, L, H)."""
    Bsz, L, H = u.shape
    x = np.zeros((Bsz, H, Abar.shape[-1]), dtype=np.complex128)
    y = np.zeros((Bsz, L, H))
    for k in range(L):
        x = Abar * x + Bbar * u[:, k, :, None]
        y[:, k, :] = 2 * np.real(np.sum(C * x, axis=-1))
    return y


def layer_by_recurrence(params, u, discretization, bidirectional):
    dt, Lam, B, C, D = unpack(params)
    Abar, Bbar = np_discretize(Lam, B, dt, discretization)
    y = recurrence(Abar, Bbar, C[0], u)
    if bidirectional:
        y = y + recurrence(Abar, Bbar, C[1], u[:, ::-1])[:, ::-1]
    return y + D * u


def make_layer(H, N, init="inv", discretization="zoh", bidirectional=False, **options):
    return S4D(
        d_model=H,
        d_state=N,
        ssm_init=init,
        discretization=discretization,
        bidirectional=bidirectional,
        param_dtype=jnp.float64,
        **options,
    )


def init_variables(layer, seed=0, L=4):
    # Params only need the kernel, which is cheaper to trace than the whole layer.
    init = jax.jit(lambda key: layer.init(key, L, method=S4D.kernel))
    return init(jax.random.key(seed))


def random_variables(H, N, channels, seed):
    """Random float64 params (not the structured init) so every term of the kernel is exercised;
    dt is large enough that the kernel visibly decays and oscillates within a few dozen steps."""
    rng = np.random.default_rng(seed)
    N2 = N // 2
    p = {
        "log_dt": rng.uniform(np.log(1e-2), np.log(0.5), size=(H,)),
        "log_A_real": rng.normal(size=(H, N2)) * 0.7 - 0.5,
        "A_imag": rng.normal(size=(H, N2)) * 3.0,
        "B": rng.normal(size=(H, N2, 2)),
        "C": rng.normal(size=(channels, H, N2, 2)) * np.sqrt(0.5),
        "D": rng.normal(size=(H,)),
    }
    return {"params": {k: jnp.asarray(v, dtype=jnp.float64) for k, v in p.items()}}


# ----------------------------------------------------------------------------------------------
# HiPPO


@pytest.mark.parametrize("N", [1, 2, 5, 8, 16])
def test_hippo_legs_closed_form(N):
    A, B = hippo_legs(N)
    A_ref, B_ref = legs_by_loops(N)
    np.testing.assert_array_equal(A, A_ref)
    np.testing.assert_array_equal(B, B_ref)
    assert A.dtype == np.float64 and B.dtype == np.float64


@pytest.mark.parametrize("N", [3, 8, 16, 64])
def test_nplr_reconstructs_legs(N):
    A, B = hippo_legs(N)
    S, P, B2 = hippo_legs_nplr(N)
    np.testing.assert_allclose(P, [np.sqrt(n + 0.5) for n in range(N)], rtol=0, atol=1e-15)
    np.testing.assert_allclose(S - np.outer(P, P), A, rtol=0, atol=1e-12 * N)
    np.testing.assert_array_equal(B2, B)
    # S = skew-symmetric - I/2
    np.testing.assert_allclose(S + S.T, -np.eye(N), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.diag(S), -0.5, rtol=0, atol=0)


@pytest.mark.parametrize("N", [4, 7, 16, 64])
def test_normal_part_eig_reconstructs_S(N):
    S, _, _ = hippo_legs_nplr(N)
    Lam, V = hippo_legs_normal_eig(N)
    assert Lam.shape == (N,) and V.shape == (N, N)
    np.testing.assert_allclose(V @ np.diag(Lam) @ V.conj().T, S, rtol=0, atol=1e-12 * N)
    np.testing.assert_allclose(V.conj().T @ V, np.eye(N), rtol=0, atol=1e-12 * N)
    np.testing.assert_allclose(Lam.real, -0.5, rtol=0, atol=1e-12)


@pytest.mark.parametrize("N", [2, 8, 16, 64])
def test_s4d_inv_and_lin_formulas(N):
    inv = diagonal_init("inv", N)
    lin = diagonal_init("lin", N)
    assert inv.shape == lin.shape == (N // 2,)
    assert inv.dtype == lin.dtype == np.complex128
    for n in range(N // 2):
        expected = complex(-0.5, (N / np.pi) * (N / (2 * n + 1) - 1))
        assert inv[n] == pytest.approx(expected, rel=1e-14)
        assert lin[n] == pytest.approx(complex(-0.5, np.pi * n), rel=1e-14, abs=1e-14)


@pytest.mark.parametrize("N", [2, 4, 7, 16, 32])
def test_s4d_legs_are_upper_eigenvalues_of_normal_part(N):
    S, _, _ = hippo_legs_nplr(N)
    eig = np.linalg.eigvals(S)  # general eig: independent of the eigh route
    upper = np.sort_complex(eig[eig.imag > 1e-8])
    legs = diagonal_init("legs", N)
    assert legs.shape == (N // 2,)
    assert np.all(legs.imag > 0)
    assert np.all(np.diff(legs.imag) > 0), "sorted by increasing imaginary part"
    np.testing.assert_allclose(np.sort(legs.imag), np.sort(upper.imag), rtol=1e-10)
    np.testing.assert_allclose(legs.real, -0.5, atol=1e-12)


@pytest.mark.parametrize("kind", ["legs", "inv", "lin"])
@pytest.mark.parametrize("N", [2, 8, 64])
def test_diagonal_inits_are_stable(kind, N):
    Lam = diagonal_init(kind, N)
    assert Lam.shape == (N // 2,) and np.all(Lam.real < 0)


def test_unknown_diagonal_init_lists_valid_kinds():
    with pytest.raises(ValueError, match="'legs', 'inv', 'lin'"):
        diagonal_init("legt", 8)


# ----------------------------------------------------------------------------------------------
# Discretization


@pytest.mark.parametrize("N", [1, 4, 9])
def test_discretizations_match_matrix_definitions(N):
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(N)
    Lam = -np.exp(rng.normal(size=N)) + 1j * rng.normal(size=N) * 5
    B = rng.normal(size=N) + 1j * rng.normal(size=N)
    dt = 0.3
    A = np.diag(Lam)
    I = np.eye(N)

    Abar, Bbar = discretize_zoh(jnp.asarray(Lam), jnp.asarray(B), dt)
    Abar_ref = scipy_linalg.expm(dt * A)
    Bbar_ref = np.linalg.solve(A, (Abar_ref - I) @ B)
    np.testing.assert_allclose(np.asarray(Abar), np.diag(Abar_ref), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(Bbar), Bbar_ref, rtol=1e-12)

    Abar, Bbar = discretize_bilinear(jnp.asarray(Lam), jnp.asarray(B), dt)
    M = np.linalg.inv(I - dt / 2 * A)
    np.testing.assert_allclose(np.asarray(Abar), np.diag(M @ (I + dt / 2 * A)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(Bbar), M @ (dt * B), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(DISCRETIZATIONS))
def test_discretization_broadcasts_and_keeps_precision(name):
    rng = np.random.default_rng(1)
    H, N2 = 3, 4
    Lam = -np.exp(rng.normal(size=(H, N2))) + 1j * rng.normal(size=(H, N2))
    B = rng.normal(size=(H, N2)) + 1j * rng.normal(size=(H, N2))
    dt = np.exp(rng.normal(size=(H, 1)))
    fn = jax.jit(DISCRETIZATIONS[name])
    Abar, Bbar = fn(jnp.asarray(Lam), jnp.asarray(B), jnp.asarray(dt))
    Abar_ref, Bbar_ref = np_discretize(Lam, B, dt, name)
    assert Abar.dtype == Bbar.dtype == jnp.complex128
    np.testing.assert_allclose(Abar, Abar_ref, rtol=1e-13)
    np.testing.assert_allclose(Bbar, Bbar_ref, rtol=1e-13)
    # complex64 stays complex64 and is accurate to single precision
    Abar32, Bbar32 = fn(
        jnp.asarray(Lam, jnp.complex64), jnp.asarray(B, jnp.complex64), jnp.asarray(dt, jnp.float32)
    )
    assert Abar32.dtype == Bbar32.dtype == jnp.complex64
    np.testing.assert_allclose(Abar32, Abar_ref, rtol=1e-5)
    np.testing.assert_allclose(Bbar32, Bbar_ref, rtol=1e-5)


def test_zoh_small_step_keeps_digits():
    # Bbar ~ dt B for tiny dt; exp(.) - 1 would lose ~all float32 digits here, expm1 does not.
    Lam = jnp.asarray([-0.5 + 2.0j], jnp.complex64)
    _, Bbar = discretize_zoh(Lam, jnp.ones(1, jnp.complex64), jnp.float32(1e-6))
    ref = np.expm1(1e-6 * complex(-0.5, 2.0)) / complex(-0.5, 2.0)
    np.testing.assert_allclose(np.asarray(Bbar), [ref], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Kernels and convolutions


@pytest.mark.parametrize("L", [1, 7, 33, 64, 1000])
def test_vandermonde_kernel_matches_powers(L):
    rng = np.random.default_rng(L)
    ch, H, N2 = 2, 3, 5
    logA = -np.exp(rng.normal(size=(H, N2))) * 0.1 + 1j * rng.normal(size=(H, N2))
    Abar = np.exp(logA)
    CB = rng.normal(size=(ch, H, N2)) + 1j * rng.normal(size=(ch, H, N2))
    ref = np.zeros((ch, H, L))
    for l in range(L):
        ref[..., l] = 2 * np.real(np.sum(CB * Abar**l, axis=-1))
    K = vandermonde_kernel(jnp.asarray(Abar), jnp.asarray(CB), L)
    K_log = vandermonde_kernel(None, jnp.asarray(CB), L, log_Abar=jnp.asarray(logA))
    assert K.dtype == jnp.float64 and K.shape == (ch, H, L)
    assert_rel_close(K, ref, 1e-12)
    assert_rel_close(K_log, ref, 1e-12)


@pytest.mark.parametrize("L", [1, 2, 7, 10, 33])
def test_causal_fft_conv_matches_direct(L):
    rng = np.random.default_rng(100 + L)
    Bsz, H = 2, 3
    u = rng.normal(size=(Bsz, L, H))
    k = rng.normal(size=(H, L))
    y = jax.jit(causal_fft_conv)(jnp.asarray(u), jnp.asarray(k))
    assert y.dtype == jnp.float64
    assert_rel_close(y, direct_causal_conv(u, k), 1e-12)


@pytest.mark.parametrize("L", [1, 2, 7, 10, 33])
def test_bidirectional_fft_conv_matches_two_direct_convs(L):
    rng = np.random.default_rng(200 + L)
    Bsz, H = 2, 3
    u = rng.normal(size=(Bsz, L, H))
    kf = rng.normal(size=(H, L))
    kb = rng.normal(size=(H, L))
    y = jax.jit(bidirectional_fft_conv)(jnp.asarray(u), jnp.asarray(kf), jnp.asarray(kb))
    ref = direct_causal_conv(u, kf) + direct_anticausal_conv(u, kb)
    assert_rel_close(y, ref, 1e-12)
    # the anti-causal term is the causal conv of the reversed sequence, reversed
    ref2 = direct_causal_conv(u, kf) + direct_causal_conv(u[:, ::-1], kb)[:, ::-1]
    assert_rel_close(y, ref2, 1e-12)
    # with no backward kernel it is the causal conv
    y0 = bidirectional_fft_conv(jnp.asarray(u), jnp.asarray(kf), jnp.zeros((H, L)))
    assert_rel_close(y0, causal_fft_conv(jnp.asarray(u), jnp.asarray(kf)), 1e-12)


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("batch", [(), (1,), (3,), (2, 5)])
def test_fft_conv_any_batch_shape_matches_direct(batch, paired, monkeypatch):
    """The convolution pairs sequences of the batch axis (-3) as real and imaginary parts (or,
    where a pair would straddle two devices, sends each alone): an odd batch, a single sequence,
    no batch axis and extra leading axes all give each sequence's own convolution, and the
    gradient is each sequence's own too."""
    from ssm_lra.ssm import conv

    monkeypatch.setattr(conv, "_pairs_stay_on_one_device", lambda B: paired)
    rng = np.random.default_rng(300 + len(batch))
    L, H = 13, 2
    u = rng.normal(size=(*batch, L, H))
    kf, kb = rng.normal(size=(2, H, L))
    flat = u.reshape(-1, L, H)
    ref = (direct_causal_conv(flat, kf) + direct_anticausal_conv(flat, kb)).reshape(u.shape)
    y = jax.jit(bidirectional_fft_conv)(jnp.asarray(u), jnp.asarray(kf), jnp.asarray(kb))
    assert y.shape == u.shape
    assert_rel_close(y, ref, 1e-12)
    # d/du of <y, g> is the adjoint convolution of g: the causal kernel becomes anti-causal.
    g = rng.normal(size=u.shape)
    du = jax.grad(lambda x: jnp.sum(bidirectional_fft_conv(x, jnp.asarray(kf), jnp.asarray(kb)) * g))(jnp.asarray(u))
    gflat = g.reshape(-1, L, H)
    ref_du = (direct_anticausal_conv(gflat, kf) + direct_causal_conv(gflat, kb)).reshape(u.shape)
    assert_rel_close(du, ref_du, 1e-12)
    # d/dk of <y, g> correlates g with u, summed over every sequence: causal lag m pairs g[t] with
    # u[t - m], anti-causal lead m with u[t + m].
    dkf, dkb = jax.jit(jax.grad(
        lambda a, b: jnp.sum(bidirectional_fft_conv(jnp.asarray(u), a, b) * g), argnums=(0, 1)
    ))(jnp.asarray(kf), jnp.asarray(kb))
    ref_dkf = np.array([[np.sum(gflat[:, m:, h] * flat[:, : L - m, h]) for m in range(L)] for h in range(H)])
    ref_dkb = np.array([[np.sum(gflat[:, : L - m, h] * flat[:, m:, h]) for m in range(L)] for h in range(H)])
    assert_rel_close(dkf, ref_dkf, 1e-12)
    assert_rel_close(dkb, ref_dkb, 1e-12)
    dk = jax.grad(lambda a: jnp.sum(causal_fft_conv(jnp.asarray(u), a) * g))(jnp.asarray(kf))
    assert_rel_close(dk, ref_dkf, 1e-12)


def kernel_by_powers(W, a, L):
    """K[h, l] = 2 Re sum_n W[h, n] a[h, n]^l with the powers multiplied out one by one."""
    K = np.zeros((W.shape[0], L))
    power = np.ones_like(a)
    for l in range(L):
        K[:, l] = 2 * np.real(np.sum(W * power, axis=-1))
        power = power * a
    return K


def random_diagonal_system(rng, L: int, H: int = 3, N2: int = 4):
    """A batch of 2 inputs (2, L, H), a stable diagonal system (log a, W forwards and backwards,
    (H, N2) complex) and its two kernels (H, L) by powers."""
    log_a = -np.exp(rng.normal(size=(H, N2))) * 0.3 + 1j * rng.normal(size=(H, N2)) * 2
    W_fwd, W_bwd = rng.normal(size=(2, H, N2)) + 1j * rng.normal(size=(2, H, N2))
    u = rng.normal(size=(2, L, H))
    k_fwd, k_bwd = kernel_by_powers(W_fwd, np.exp(log_a), L), kernel_by_powers(W_bwd, np.exp(log_a), L)
    return u, log_a, W_fwd, W_bwd, k_fwd, k_bwd


@pytest.mark.parametrize("L,T", [(1, 1), (9, 1), (16, 4), (37, 8), (37, 64), (50, 7)])
def test_chunked_conv_matches_direct_convolutions(L, T):
    """Chunks of every kind: one step, dividing L, not dividing it, longer than the sequence."""
    rng = np.random.default_rng(L * 100 + T)
    u, log_a, W_fwd, W_bwd, k_fwd, k_bwd = random_diagonal_system(rng, L)
    conv = jax.jit(chunked_ssm_conv, static_argnames="chunk")
    causal = conv(jnp.asarray(u), jnp.asarray(log_a), jnp.asarray(W_fwd), chunk=T)
    assert_rel_close(causal, direct_causal_conv(u, k_fwd), 1e-12)
    both = conv(jnp.asarray(u), jnp.asarray(log_a), jnp.asarray(W_fwd), jnp.asarray(W_bwd), chunk=T)
    assert_rel_close(both, direct_causal_conv(u, k_fwd) + direct_anticausal_conv(u, k_bwd), 1e-12)


@pytest.mark.parametrize("route", ["fft", "chunked"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_skip_in_the_kernel_is_d_times_u_with_its_gradients(route, bidirectional):
    """D folded into lag 0 (`with_skip`, `chunked_ssm_conv(skip=)`) gives conv + D u, and the same
    gradients for u, D and the kernel as adding D u outside, in float64 (dD = sum of dy u)."""
    rng = np.random.default_rng(7 + bidirectional)
    L, T = 21, 4
    u, log_a, W_fwd, W_bwd, k_fwd, k_bwd = map(jnp.asarray, random_diagonal_system(rng, L))
    D = jnp.asarray(rng.normal(size=(u.shape[-1],)))
    dy = jnp.asarray(rng.normal(size=u.shape))
    W_bwd = W_bwd if bidirectional else None
    k_bwd = k_bwd if bidirectional else None

    def fft_conv(u, k_fwd):
        return bidirectional_fft_conv(u, k_fwd, k_bwd) if bidirectional else causal_fft_conv(u, k_fwd)

    if route == "fft":
        folded = lambda u, D, W: fft_conv(u, with_skip(k_fwd * W, D))
        outside = lambda u, D, W: fft_conv(u, k_fwd * W) + D * u
    else:
        conv = lambda u, W, skip=None: chunked_ssm_conv(u, log_a, W_fwd * W, W_bwd, chunk=T, skip=skip)
        folded = lambda u, D, W: conv(u, W, skip=D)
        outside = lambda u, D, W: conv(u, W) + D * u
    W = jnp.ones(())  # a scalar on the forward kernel, so that its gradient is checked too
    y, pull = jax.vjp(folded, u, D, W)
    y_ref, pull_ref = jax.vjp(outside, u, D, W)
    direct = direct_causal_conv(u, k_fwd) + (direct_anticausal_conv(u, k_bwd) if bidirectional else 0)
    assert_rel_close(y, direct + D * u, 1e-12)
    for got, want in zip(pull(dy), pull_ref(dy)):
        assert_rel_close(got, want, 1e-12)
    assert_rel_close(pull(dy)[1], jnp.sum(dy * u, axis=(0, 1)), 1e-12)


def test_chunked_conv_fused_chunk_scan_matches_xla_scan():
    """The fused kernel (run by Pallas' interpreter) carrying the chunk states gives the direct
    convolutions, and the same gradients as XLA's scan with respect to the input and the system.
    5 chunks, the last one padded (the interpreter is slow: one case)."""
    L, T = 37, 8
    rng = np.random.default_rng(L * 10 + T)
    u, log_a, W_fwd, W_bwd, k_fwd, k_bwd = random_diagonal_system(rng, L)
    args = tuple(map(jnp.asarray, (u, log_a, W_fwd, W_bwd)))
    g = jnp.asarray(rng.normal(size=u.shape))
    conv = lambda scan: lambda *a: chunked_ssm_conv(*a, chunk=T, scan=scan)

    @jax.jit
    def fused_value_and_grads(*args):
        # The output and the gradients of sum(y * g) from one program: the interpreted kernel
        # is slow to compile, and the gradient's program holds the forward pass anyway.
        y, pullback = jax.vjp(conv("fused_interpret"), *args)
        return y, pullback(g)

    y, fused_grads = fused_value_and_grads(*args)
    assert_rel_close(y, direct_causal_conv(u, k_fwd) + direct_anticausal_conv(u, k_bwd), 1e-12)
    xla_loss = lambda *a: jnp.sum(conv("xla")(*a) * g)
    xla_grads = jax.jit(jax.grad(xla_loss, argnums=(0, 1, 2, 3)))(*args)
    assert len(fused_grads) == len(xla_grads) == 4
    for got, ref in zip(fused_grads, xla_grads):
        assert_rel_close(got, ref, 1e-11)


@pytest.mark.parametrize("grads", ["kernel", "fft"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_diagonal_scan_kernel_matches_direct_convolutions_and_fft_gradients(bidirectional, grads):
    """The recurrence kernel (Pallas' interpreter) gives the direct convolutions, and its
    gradients are the FFT route's, both ways of taking them: the gradient kernel (states and
    their derivative recomputed in time order, dy scanned the other way) and the FFT one (du by
    the transposed scan, the system's through the batch cross-correlation). L = 21 leaves the
    last of the 8-step chunks padded; N2 = 3 and H = 5 are padded to the kernels' block sizes."""
    L = 21
    rng = np.random.default_rng(21 + bidirectional)
    u, log_a, W_fwd, W_bwd, k_fwd, k_bwd = random_diagonal_system(rng, L, H=5, N2=3)
    if not bidirectional:
        W_bwd = None
    args = tuple(jnp.asarray(a) for a in (u, log_a, W_fwd, W_bwd) if a is not None)
    g = jnp.asarray(rng.normal(size=u.shape))

    @jax.jit
    def scan_value_and_grads(*args):
        y, pullback = jax.vjp(lambda *a: diagonal_scan_conv(*a, interpret=True, grads=grads), *args)
        return y, pullback(g)

    y, grads = scan_value_and_grads(*args)
    expected = direct_causal_conv(u, k_fwd) + (direct_anticausal_conv(u, k_bwd) if bidirectional else 0)
    assert_rel_close(y, expected, 1e-12)

    def fft_route(u, log_a, *W):
        kernels = [vandermonde_kernel(None, w, L, log_Abar=log_a) for w in W]
        return bidirectional_fft_conv(u, *kernels) if bidirectional else causal_fft_conv(u, *kernels)

    fft_grads = jax.jit(jax.grad(lambda *a: jnp.sum(fft_route(*a) * g), argnums=tuple(range(len(args)))))(*args)
    assert len(grads) == len(fft_grads) == len(args)
    for got, ref in zip(grads, fft_grads):
        assert_rel_close(got, ref, 1e-11)


def test_batch_cross_correlation_by_definition():
    rng = np.random.default_rng(5)
    B, L, H = 3, 6, 2
    u, g = rng.normal(size=(2, B, L, H))
    c = np.asarray(batch_cross_correlation(jnp.asarray(u), jnp.asarray(g)))
    n = fft_length(L)
    assert c.shape == (n, H)
    for lag in range(-(L - 1), L):
        expected = sum(g[:, t] * u[:, t - lag] for t in range(L) if 0 <= t - lag < L).sum(axis=0)
        np.testing.assert_allclose(c[lag % n], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T", [1, 2, 5, 16])
def test_chunk_toeplitz_and_its_gradient_by_definition(T):
    """Values entry by entry, with and without the anti-causal kernel; the gradient of each kernel
    is the sum of dM along its diagonals, computed without a scatter (the reason for the tiling
    construction)."""
    rng = np.random.default_rng(T)
    k_fwd, k_bwd = rng.normal(size=(2, 3, T))
    both = np.asarray(chunk_toeplitz(jnp.asarray(k_fwd), jnp.asarray(k_bwd)))
    causal = np.asarray(chunk_toeplitz(jnp.asarray(k_fwd)))
    for r in range(T):
        for s_ in range(T):
            fwd = k_fwd[:, r - s_] if s_ <= r else 0
            bwd = k_bwd[:, s_ - r] if s_ >= r else 0
            np.testing.assert_allclose(both[:, r, s_], fwd + bwd, rtol=1e-15)
            np.testing.assert_array_equal(causal[:, r, s_], fwd)
    dM = rng.normal(size=(3, T, T))
    pull = jax.vjp(chunk_toeplitz, jnp.asarray(k_fwd), jnp.asarray(k_bwd))[1]
    d_fwd, d_bwd = pull(jnp.asarray(dM))
    for lag in range(T):
        np.testing.assert_allclose(d_fwd[:, lag], np.trace(dM, offset=-lag, axis1=1, axis2=2), rtol=1e-12)
        np.testing.assert_allclose(d_bwd[:, lag], np.trace(dM, offset=lag, axis1=1, axis2=2), rtol=1e-12)
    jaxpr = str(jax.make_jaxpr(pull)(jnp.asarray(dM)))
    assert "scatter" not in jaxpr and "gather" not in jaxpr


def test_fft_length_is_power_of_two_at_least_2L():
    for L in range(1, 70):
        n = fft_length(L)
        assert n >= 2 * L and n & (n - 1) == 0 and n < 4 * L


# ----------------------------------------------------------------------------------------------
# The S4D layer


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("N", [4, 8, 16])
def test_kernel_matches_impulse_response_of_recurrence(discretization, N):
    H = 3
    layer = make_layer(H, N, discretization=discretization, bidirectional=True)
    variables = random_variables(H, N, channels=2, seed=N)
    dt, Lam, B, C, _ = unpack(variables["params"])
    Abar, Bbar = np_discretize(Lam, B, dt, discretization)
    for L in [7, 16, 33, 64]:
        K = jax.jit(lambda v: layer.apply(v, L, method=S4D.kernel))(variables)
        assert K.shape == (2, H, L) and K.dtype == jnp.float64
        impulse = np.zeros((1, L, H))
        impulse[0, 0, :] = 1.0
        for c in range(2):
            ref = recurrence(Abar, Bbar, C[c], impulse)[0].T  # (H, L)
            assert_rel_close(K[c], ref, 1e-11)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("L", [7, 16, 33])
def test_layer_matches_recurrence(L, discretization, bidirectional):
    check_layer_against_recurrence(L, discretization, bidirectional)


# Chunks that divide L, that do not, that are longer than L, and the default.
@pytest.mark.parametrize(
    "L,chunk_size,discretization,bidirectional",
    [(16, 4, "zoh", True), (33, 5, "bilinear", True), (33, 5, "zoh", False), (7, 64, "zoh", True), (33, None, "bilinear", False)],
)
def test_chunked_layer_matches_recurrence(L, chunk_size, discretization, bidirectional):
    check_layer_against_recurrence(L, discretization, bidirectional, conv="chunked", chunk_size=chunk_size)


@pytest.mark.parametrize(
    "conv, d_state, on_gpu, route",
    [("auto", 4, True, "chunked"), ("auto", 32, True, "chunked"), ("auto", 34, True, "fft"), ("auto", 64, True, "fft"),
     ("auto", 4, False, "fft"), ("fft", 4, True, "fft"), ("chunked", 64, False, "chunked"), ("scan", 4, True, "scan")],
)
def test_auto_conv_picks_chunks_on_a_gpu_at_few_states(conv, d_state, on_gpu, route):
    assert resolve_conv(conv, d_state, on_gpu) == route


@pytest.mark.parametrize("N, route", [(8, "chunked"), (AUTO_CHUNKED_MAX_STATE + 2, "fft")])
def test_auto_conv_as_on_a_gpu_runs_its_route_and_matches_recurrence(monkeypatch, N, route):
    # As if on a GPU (the chunk scan's own check still sees this CPU and stays on XLA): auto must run
    # the chunks of AUTO_CHUNK steps with TF32 products at few states, the FFT above, and either way
    # compute the layer exactly.
    monkeypatch.setattr(s4d_module, "fused_scan_available", lambda: True)
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return chunked_ssm_conv(*args, **kwargs)

    monkeypatch.setattr(s4d_module, "chunked_ssm_conv", spy)
    H, L = 3, 70
    layer = make_layer(H, N, bidirectional=True, conv="auto")
    variables = random_variables(H, N, channels=2, seed=N)
    u = np.random.default_rng(N).normal(size=(2, L, H))
    y = layer.apply(variables, jnp.asarray(u))
    ref = layer_by_recurrence(variables["params"], u, "zoh", True)
    assert_rel_close(y, ref, 1e-10)
    if route == "chunked":
        assert [(c["chunk"], c["precision"], c["scan"]) for c in calls] == [(AUTO_CHUNK, "default", "xla")]
    else:
        assert calls == []


def test_scan_layer_matches_recurrence():
    check_layer_against_recurrence(19, "zoh", True, conv="scan_interpret")


def test_chunked_layer_with_fused_chunk_scan_matches_recurrence():
    check_layer_against_recurrence(33, "zoh", True, conv="chunked", chunk_size=8, chunk_scan="fused_interpret")


def check_layer_against_recurrence(L, discretization, bidirectional, **options):
    H, N = 4, 8
    layer = make_layer(H, N, discretization=discretization, bidirectional=bidirectional, **options)
    variables = random_variables(H, N, channels=2 if bidirectional else 1, seed=L)
    u = np.random.default_rng(L).normal(size=(2, L, H))
    y = jax.jit(layer.apply)(variables, jnp.asarray(u))
    assert y.shape == u.shape and y.dtype == jnp.float64
    ref = layer_by_recurrence(variables["params"], u, discretization, bidirectional)
    assert_rel_close(y, ref, 1e-10)


@pytest.mark.parametrize("init", ["legs", "inv", "lin", "ptd"])
def test_layer_at_init_matches_recurrence(init):
    # The structured inits (dt ~ 1e-2, large imaginary parts for inv/legs), not random params.
    H, N, L = 4, 16, 33
    layer = make_layer(H, N, init=init, bidirectional=True)
    variables = init_variables(layer, seed=3)
    u = np.random.default_rng(0).normal(size=(2, L, H))
    y = jax.jit(layer.apply)(variables, jnp.asarray(u))
    ref = layer_by_recurrence(variables["params"], u, "zoh", True)
    assert_rel_close(y, ref, 1e-10)


def test_parameters_names_shapes_and_init():
    H, N = 5, 16
    layer = make_layer(H, N, init="legs", bidirectional=True)
    p = init_variables(layer)["params"]
    assert set(p) == {"log_dt", "log_A_real", "A_imag", "B", "C", "D"}
    assert SSM_PARAM_NAMES == frozenset({"log_dt", "log_A_real", "A_imag", "B"})
    assert SSM_PARAM_NAMES <= set(p)
    shapes = {k: v.shape for k, v in p.items()}
    assert shapes == {
        "log_dt": (H,),
        "log_A_real": (H, N // 2),
        "A_imag": (H, N // 2),
        "B": (H, N // 2, 2),
        "C": (2, H, N // 2, 2),
        "D": (H,),
    }
    assert all(v.dtype == jnp.float64 for v in p.values())
    dt = np.exp(np.asarray(p["log_dt"]))
    assert np.all((dt >= 1e-3) & (dt <= 1e-1))
    Lam = -np.exp(np.asarray(p["log_A_real"])) + 1j * np.asarray(p["A_imag"])
    expected = np.broadcast_to(diagonal_init("legs", N), (H, N // 2))
    np.testing.assert_allclose(Lam, expected, rtol=1e-14)
    np.testing.assert_array_equal(p["B"][..., 0], 1.0)
    np.testing.assert_array_equal(p["B"][..., 1], 0.0)

    p1 = init_variables(make_layer(H, N))["params"]
    assert p1["C"].shape == (1, H, N // 2, 2)


def test_ptd_init_lambda_and_b_from_perturbed_legs():
    """S4-PTD: Lambda = the conjugate half of the PTD eigenvalues, B = V^-1 B_legs (same half)."""
    from ssm_lra.ssm.ptd import ptd_conj_half

    H, N = 3, 16
    p = init_variables(make_layer(H, N, init="ptd"))["params"]
    Lam_ptd, V_h, Vinv_h = ptd_conj_half(N)
    Lam = -np.exp(np.asarray(p["log_A_real"])) + 1j * np.asarray(p["A_imag"])
    np.testing.assert_allclose(Lam, np.broadcast_to(Lam_ptd, (H, N // 2)), rtol=1e-13)
    assert np.all(Lam.real <= -0.5 + 1e-9)
    B = np.asarray(p["B"][..., 0]) + 1j * np.asarray(p["B"][..., 1])
    _, B_legs = hippo_legs(N)
    np.testing.assert_allclose(B, np.broadcast_to(Vinv_h @ B_legs, (H, N // 2)), rtol=1e-13)
    # the kept half and its conjugate give back the real LegS input vector
    np.testing.assert_allclose(2 * (V_h @ B[0]).real, B_legs, atol=1e-10 * B_legs.max())
    with pytest.raises(ValueError, match="even"):
        S4D(d_model=2, d_state=7, ssm_init="ptd")


def test_c_init_has_variance_half_per_part():
    C = np.asarray(complex_normal_init(0.5)(jax.random.key(0), (200_000, 2), jnp.float64))
    assert abs(C.var() - 0.5) < 0.01 and abs(C.mean()) < 0.01


def test_float32_default_and_input_dtype_preserved():
    H, N, L = 3, 8, 16
    layer = S4D(d_model=H, d_state=N, bidirectional=True)
    u = jnp.asarray(np.random.default_rng(0).normal(size=(2, L, H)), jnp.float32)
    variables = jax.jit(lambda key: layer.init(key, u))(jax.random.key(0))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    y = jax.jit(layer.apply)(variables, u)
    assert y.dtype == jnp.float32
    # float32 path agrees with the float64 recurrence to single precision
    ref = layer_by_recurrence(variables["params"], np.asarray(u, np.float64), "zoh", True)
    assert_rel_close(y, ref, 1e-4)


@pytest.mark.parametrize(
    "options", [{"conv": "fft"}, {"conv": "chunked", "chunk_size": 4}, {"conv": "scan_interpret"}], ids=["fft", "chunked", "scan"]
)
def test_gradients_match_finite_differences(options):
    H, N, L = 2, 4, 9
    layer = make_layer(H, N, discretization="zoh", bidirectional=True, **options)
    variables = random_variables(H, N, channels=2, seed=7)
    check_layer_gradients(layer, variables["params"], H, L)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ssm_init": "legt"}, "'legs', 'inv', 'lin'"),
        ({"discretization": "euler"}, "'zoh', 'bilinear'"),
        ({"conv": "direct"}, "'auto', 'fft', 'chunked', 'scan', 'scan_interpret'"),
        ({"conv": "chunked", "chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"conv": "chunked", "chunk_precision": "tf32"}, "'default', 'highest'"),
        ({"conv": "chunked", "chunk_scan": "pallas"}, "'auto', 'xla', 'fused', 'fused_interpret'"),
    ],
)
def test_invalid_options_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S4D(d_model=2, d_state=4, **kwargs)


def test_scan_conv_off_a_gpu_names_the_fft():
    if jax.default_backend() == "gpu":
        pytest.skip("the kernel runs here")
    with pytest.raises(ValueError, match="unknown grads 'adjoint'; valid ones are 'kernel', 'fft'"):
        diagonal_scan_conv(jnp.zeros((1, 3, 2)), jnp.zeros((2, 1), complex), jnp.zeros((2, 1), complex), grads="adjoint")
    with pytest.raises(ValueError, match="conv 'scan' runs a Pallas .* use conv 'fft' \\(or 'scan_interpret'"):
        S4D(d_model=2, d_state=4, conv="scan")


def test_fused_chunk_scan_off_a_gpu_names_the_xla_scan():
    if jax.default_backend() == "gpu":
        pytest.skip("the fused kernel runs here")
    with pytest.raises(ValueError, match="use scan 'xla'"):
        S4D(d_model=2, d_state=4, conv="chunked", chunk_scan="fused")
