"""Tests of the S5 layer: parallel scan against step-by-step recurrences, the block-diagonal
HiPPO-N / PTD init, conjugate symmetry, padding, options.

References are independent float64 code: numpy loops over time, `jax.lax.scan`, dense eigensolvers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from ssm_lra.ssm import check_mixer_config, mixer_class
from ssm_lra.ssm.hippo import hippo_legs_nplr
from ssm_lra.ssm.ptd import ptd_eig
from ssm_lra.ssm.s5 import S5, SSM_PARAM_NAMES, block_diagonal_init
from tests.ssm.checks import assert_rel_close, check_layer_gradients, np_discretize


@pytest.fixture(autouse=True)
def x64():
    """float64 for every test here, restored afterwards so other test modules keep float32."""
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------------------------
# References


def unpack(params, clip_eigs=False):
    """S5 params -> numpy (Lambda (P2,), B (P2, H), C (H, ch*P2), D (H,), dt (P2,))."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    re = np.minimum(p["Lambda_re"], -1e-4) if clip_eigs else p["Lambda_re"]
    Lam = re + 1j * p["Lambda_im"]
    B = p["B"][..., 0] + 1j * p["B"][..., 1]
    C = p["C"][..., 0] + 1j * p["C"][..., 1]
    return Lam, B, C, p["D"], np.exp(p["log_dt"])


def s5_by_loop(params, u, discretization, conj_sym, bidirectional, clip_eigs=False):
    """x_k = Abar x_{k-1} + Bbar u_k forwards (and x_k = Abar x_{k+1} + Bbar u_k backwards),
    y = Re([C1 C2] [x_fwd; x_bwd]) (x2 under conjugate symmetry) + D u, one step at a time."""
    Lam, B, C, D, dt = unpack(params, clip_eigs)
    Abar, Bbar = np_discretize(Lam[:, None], B, dt[:, None], discretization)
    Abar = Abar[:, 0]
    Bsz, L, H = u.shape
    P2 = Lam.shape[0]
    Bu = u @ Bbar.T  # (Bsz, L, P2)
    fwd = np.zeros((Bsz, L, P2), complex)
    x = np.zeros((Bsz, P2), complex)
    for k in range(L):
        x = Abar * x + Bu[:, k]
        fwd[:, k] = x
    xs = fwd
    if bidirectional:
        bwd = np.zeros((Bsz, L, P2), complex)
        x = np.zeros((Bsz, P2), complex)
        for k in reversed(range(L)):
            x = Abar * x + Bu[:, k]
            bwd[:, k] = x
        xs = np.concatenate([fwd, bwd], axis=-1)
    y = (xs @ C.T).real
    return (2 * y if conj_sym else y) + D * u


def s5_by_lax_scan(params, u, discretization, conj_sym, bidirectional):
    """The same recurrence with jax.lax.scan (sequential), in jax."""
    Lam, B, C, D, dt = (jnp.asarray(x) for x in unpack(params))
    if discretization == "zoh":
        Abar = jnp.exp(dt * Lam)
        Bbar = ((Abar - 1) / Lam)[:, None] * B
    else:
        Abar = (1 + dt / 2 * Lam) / (1 - dt / 2 * Lam)
        Bbar = (dt / (1 - dt / 2 * Lam))[:, None] * B
    Bu = jnp.einsum("blh,ph->lbp", jnp.asarray(u).astype(Bbar.dtype), Bbar)  # time first

    def step(x, bu):
        x = Abar * x + bu
        return x, x

    x0 = jnp.zeros(Bu.shape[1:], Bu.dtype)
    _, xs = jax.lax.scan(step, x0, Bu)
    if bidirectional:
        _, xb = jax.lax.scan(step, x0, Bu, reverse=True)
        xs = jnp.concatenate([xs, xb], axis=-1)
    y = jnp.einsum("lbp,hp->blh", xs, C).real
    return (2 * y if conj_sym else y) + D * u


def random_params(H, P2, channels, seed):
    """Random float64 params (not the structured init), with steps large enough that the state
    visibly decays and rotates within a few dozen steps."""
    rng = np.random.default_rng(seed)
    p = {
        "Lambda_re": -np.exp(rng.normal(size=P2) * 0.7 - 0.5),
        "Lambda_im": rng.normal(size=P2) * 3.0,
        "B": rng.normal(size=(P2, H, 2)),
        "C": rng.normal(size=(H, channels * P2, 2)) * np.sqrt(0.5),
        "D": rng.normal(size=H),
        "log_dt": rng.uniform(np.log(1e-2), np.log(0.5), size=P2),
    }
    return {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}


def make_layer(H, P, **kw):
    return S5(d_model=H, d_state=P, param_dtype=jnp.float64, **kw)


def init_params(layer, H, seed=0):
    return jax.jit(layer.init)(jax.random.key(seed), jnp.zeros((1, 1, H)))["params"]


# ----------------------------------------------------------------------------------------------
# The recurrence


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("conj_sym", [True, False])
def test_associative_scan_matches_loop_and_lax_scan(conj_sym, discretization, bidirectional):
    H, P, L = 3, 8, 37
    P2 = P // 2 if conj_sym else P
    layer = make_layer(H, P, conj_sym=conj_sym, discretization=discretization, bidirectional=bidirectional)
    params = random_params(H, P2, 2 if bidirectional else 1, seed=L + P2)
    u = np.random.default_rng(1).normal(size=(2, L, H))
    y = jax.jit(layer.apply)({"params": params}, jnp.asarray(u))
    assert y.shape == u.shape and y.dtype == jnp.float64
    assert_rel_close(y, s5_by_loop(params, u, discretization, conj_sym, bidirectional), 1e-11)
    assert_rel_close(y, s5_by_lax_scan(params, u, discretization, conj_sym, bidirectional), 1e-11)


@pytest.mark.parametrize("ssm_init,conj_sym", [("hippo", True), ("ptd", False)])
def test_layer_at_init_matches_loop(ssm_init, conj_sym):
    # The structured init (dt ~ 1e-3 .. 1e-1, large imaginary parts), both directions.
    H, P, L = 4, 32, 40
    layer = make_layer(H, P, blocks=2, ssm_init=ssm_init, conj_sym=conj_sym, bidirectional=True)
    u = np.random.default_rng(2).normal(size=(2, L, H))
    params = init_params(layer, H)
    y = jax.jit(layer.apply)({"params": params}, jnp.asarray(u))
    assert_rel_close(y, s5_by_loop(params, u, "zoh", conj_sym, True), 1e-10)


@pytest.mark.parametrize(
    "scan, scan_block",
    [("associative", None), ("lti", None), ("blocked", 1), ("blocked", 8), ("blocked", 64), ("unrolled", 1), ("unrolled", 8),
     ("fused_interpret", None)],  # the fused GPU kernel, through Pallas' interpreter
)
def test_every_scan_method_gives_the_layer_of_the_loop(scan, scan_block):
    # model.mixer.scan: each way of computing the states, both directions, an odd length.
    H, P, L = 3, 8, 37
    layer = make_layer(H, P, conj_sym=False, bidirectional=True, scan=scan, scan_block=scan_block)
    params = random_params(H, P, 2, seed=L + (scan_block or 0))
    u = np.random.default_rng(5).normal(size=(2, L, H))
    y = jax.jit(layer.apply)({"params": params}, jnp.asarray(u))
    assert_rel_close(y, s5_by_loop(params, u, "zoh", False, True), 1e-11)


def test_clip_eigs_clips_real_parts_in_the_forward_pass():
    H, P, L = 2, 4, 25
    params = random_params(H, P, 1, seed=3)
    params["Lambda_re"] = params["Lambda_re"].at[0].set(0.3)  # an unstable pole
    u = np.random.default_rng(3).normal(size=(1, L, H))
    clipped = jax.jit(make_layer(H, P, conj_sym=False, clip_eigs=True).apply)({"params": params}, jnp.asarray(u))
    assert_rel_close(clipped, s5_by_loop(params, u, "zoh", False, False, clip_eigs=True), 1e-11)
    raw = jax.jit(make_layer(H, P, conj_sym=False).apply)({"params": params}, jnp.asarray(u))
    assert np.max(np.abs(np.asarray(raw) - np.asarray(clipped))) > 1e-3


# ----------------------------------------------------------------------------------------------
# Conjugate symmetry and padding


@pytest.mark.parametrize("bidirectional", [False, True])
def test_conj_sym_equals_full_state_with_explicit_conjugates(bidirectional):
    """2 Re(C x) over half the states == Re(C x) over the system with each conjugate pair added."""
    H, P, L = 3, 8, 29
    P2, ch = P // 2, 2 if bidirectional else 1
    half = random_params(H, P2, ch, seed=11)
    u = jnp.asarray(np.random.default_rng(4).normal(size=(2, L, H)))
    y_half = jax.jit(make_layer(H, P, conj_sym=True, bidirectional=bidirectional).apply)({"params": half}, u)

    Lam, B, C, D, dt = unpack(half)
    C_dirs = np.split(C, ch, axis=-1)  # [C1, C2]: one (H, P2) block per direction
    C_full = np.concatenate([np.concatenate([c, c.conj()], axis=-1) for c in C_dirs], axis=-1)
    full = {
        "Lambda_re": np.tile(Lam.real, 2),
        "Lambda_im": np.concatenate([Lam.imag, -Lam.imag]),
        "B": np.stack([np.concatenate([B, B.conj()]).real, np.concatenate([B, B.conj()]).imag], -1),
        "C": np.stack([C_full.real, C_full.imag], -1),
        "D": D,
        "log_dt": np.tile(np.log(dt), 2),
    }
    full = {k: jnp.asarray(v) for k, v in full.items()}
    y_full = jax.jit(make_layer(H, P, conj_sym=False, bidirectional=bidirectional).apply)({"params": full}, u)
    assert_rel_close(y_half, y_full, 1e-12)


@pytest.mark.parametrize("conj_sym", [True, False])
def test_bidirectional_outputs_ignore_trailing_padding(conj_sym):
    H, P, L, pad = 3, 8, 21, 11
    layer = make_layer(H, P, conj_sym=conj_sym, bidirectional=True)
    rng = np.random.default_rng(5)
    u = rng.normal(size=(1, L, H))
    params = random_params(H, P // 2 if conj_sym else P, 2, seed=5)
    apply = jax.jit(layer.apply)
    y = apply({"params": params}, jnp.asarray(u))

    padded = np.concatenate([u, np.zeros((1, pad, H))], axis=1)
    mask = np.concatenate([np.ones((1, L)), np.zeros((1, pad))], axis=1)
    y_pad = apply({"params": params}, jnp.asarray(padded), mask=jnp.asarray(mask))
    assert_rel_close(y_pad[:, :L], y, 1e-12)
    # Whatever lies in the padding (e.g. a pre-norm's output), the mask keeps it out ...
    garbage = padded.copy()
    garbage[:, L:] = rng.normal(size=(1, pad, H)) * 10
    y_garbage = apply({"params": params}, jnp.asarray(garbage), mask=jnp.asarray(mask))
    assert_rel_close(y_garbage[:, :L], y, 1e-12)
    # ... while without the mask the backward scan would carry it into the real positions.
    y_leak = apply({"params": params}, jnp.asarray(garbage))
    assert np.max(np.abs(np.asarray(y_leak[:, :L] - y))) > 1e-3


# ----------------------------------------------------------------------------------------------
# Init


def by_imag(x):
    return x[np.argsort(x.imag, kind="stable")]


def legs_normal_part(n):
    return hippo_legs_nplr(n)[0]


@pytest.mark.parametrize("conj_sym", [False, True])
@pytest.mark.parametrize("kind", ["hippo", "ptd"])
def test_block_diagonal_init_structure(kind, conj_sym):
    P, J = 48, 3
    n = P // J
    Lam, V, Vinv = block_diagonal_init(kind, P, J, conj_sym)
    P2 = P // 2 if conj_sym else P
    n2 = P2 // J
    assert Lam.shape == (P2,) and V.shape == (P, P2) and Vinv.shape == (P2, P)
    np.testing.assert_allclose(Vinv @ V, np.eye(P2), atol=1e-12)
    # Block diagonal: nothing outside the J (n x n2) / (n2 x n) blocks.
    mask = np.kron(np.eye(J), np.ones((n, n2))) > 0
    assert np.all(V[~mask] == 0) and np.all(Vinv[~mask.T] == 0)
    if kind == "hippo":
        block = legs_normal_part(n)
    else:
        L_full, V_full, _ = ptd_eig(n)
        block = ((V_full * L_full) @ np.linalg.inv(V_full)).real  # LegS + E
    ref = np.linalg.eigvals(block)  # a general eigensolver, independent of the init's route
    if conj_sym:
        ref = ref[ref.imag > 0]
    for j in range(J):
        Lj, Vj = Lam[j * n2 : (j + 1) * n2], V[j * n : (j + 1) * n, j * n2 : (j + 1) * n2]
        np.testing.assert_allclose(by_imag(Lj), by_imag(ref), rtol=1e-9, atol=1e-9)
        # the columns are eigenvectors of that block
        np.testing.assert_allclose(block @ Vj, Vj * Lj, atol=1e-9 * np.abs(Lj).max())
    if kind == "hippo":
        np.testing.assert_allclose(Lam.real, -0.5, atol=1e-12)
        np.testing.assert_allclose(V.conj().T @ V, np.eye(P2), atol=1e-12)  # unitary
    else:
        assert np.all(Lam.real <= -0.5 + 1e-9)


@pytest.mark.parametrize(
    "conj_sym, c_init",
    [(True, "trunc_standard_normal"), (True, "lecun_normal"), (True, "complex_normal"), (False, "trunc_standard_normal")],
)
def test_parameters_shapes_and_init(conj_sym, c_init):
    H, P, J = 16, 64, 4
    P2 = P // 2 if conj_sym else P
    layer = make_layer(H, P, blocks=J, conj_sym=conj_sym, bidirectional=True, c_init=c_init)
    p = init_params(layer, H)
    assert {k: v.shape for k, v in p.items()} == {
        "Lambda_re": (P2,),
        "Lambda_im": (P2,),
        "B": (P2, H, 2),
        "C": (H, 2 * P2, 2),
        "D": (H,),
        "log_dt": (P2,),
    }
    assert all(v.dtype == jnp.float64 for v in p.values())
    assert SSM_PARAM_NAMES == frozenset({"Lambda_re", "Lambda_im", "B", "log_dt"}) == S5.SSM_PARAM_NAMES
    Lam0, V, _ = block_diagonal_init("hippo", P, J, conj_sym)
    np.testing.assert_allclose(np.asarray(p["Lambda_re"]) + 1j * np.asarray(p["Lambda_im"]), Lam0, rtol=1e-14)
    dt = np.exp(np.asarray(p["log_dt"]))
    assert np.all((dt >= 1e-3) & (dt <= 1e-1))
    # B~ = V^-1 B for a real B of std ~1/sqrt(P): map back to the original basis.
    Bt = np.asarray(p["B"][..., 0]) + 1j * np.asarray(p["B"][..., 1])
    B = 2 * (V @ Bt).real if conj_sym else V @ Bt
    if not conj_sym:
        assert np.abs(B.imag).max() < 1e-12
    assert abs(np.std(B.real) * np.sqrt(P) - 1) < 0.15
    C = np.asarray(p["C"][..., 0]) + 1j * np.asarray(p["C"][..., 1])
    if c_init == "complex_normal":
        assert abs(np.var(C) - 1.0) < 0.15  # E|c|^2 = 1
    else:
        # C~ = C V with V unitary (HiPPO-N): the back-transformed C has the drawn scale.
        std = 1 / np.sqrt(P) if c_init == "trunc_standard_normal" else 1 / np.sqrt(P * H)
        for Ct in np.split(C, 2, axis=-1):
            Cb = Ct @ V.conj().T  # (H, P) complex; with conj_sym, its conjugate half is missing
            scale = np.sqrt(2) if conj_sym else 1.0
            assert abs(np.std(np.concatenate([Cb.real, Cb.imag])) * scale / std - 1) < 0.2


def test_ptd_init_uses_ptd_eigenvalues_and_full_state():
    H, P, J = 4, 32, 2
    layer = make_layer(H, P, blocks=J, ssm_init="ptd", conj_sym=False, clip_eigs=True)
    p = init_params(layer, H)
    Lam = np.asarray(p["Lambda_re"]) + 1j * np.asarray(p["Lambda_im"])
    np.testing.assert_allclose(Lam, np.tile(ptd_eig(P // J)[0], J), rtol=1e-14)
    assert np.all(Lam.real < 0)


def test_float32_default_and_input_dtype_preserved():
    H, P, L = 3, 8, 16
    layer = S5(d_model=H, d_state=P, bidirectional=True)
    u = jnp.asarray(np.random.default_rng(0).normal(size=(2, L, H)), jnp.float32)
    variables = jax.jit(layer.init)(jax.random.key(0), u)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    y = jax.jit(layer.apply)(variables, u)
    assert y.dtype == jnp.float32
    ref = s5_by_loop(variables["params"], np.asarray(u, np.float64), "zoh", True, True)
    assert_rel_close(y, ref, 1e-4)


def test_gradients_match_finite_differences():
    H, P, L = 2, 4, 9
    layer = make_layer(H, P, conj_sym=True, bidirectional=True)
    params = random_params(H, P // 2, 2, seed=7)
    check_layer_gradients(layer, params, H, L)


# ----------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"d_state": 12, "blocks": 5}, "not divisible"),
        ({"d_state": 12, "blocks": 4}, "even block size"),  # block size 3 with conj_sym
        ({"d_state": 0}, "positive integer"),
        ({"blocks": 0}, "positive integer"),
        ({"discretization": "euler"}, "'zoh', 'bilinear'"),
        ({"c_init": "zeros"}, "'trunc_standard_normal', 'lecun_normal', 'complex_normal'"),
        ({"ssm_init": "legt"}, "'hippo', 'ptd'"),
        ({"scan": "pallas"}, "'lti'.*'fused'"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min <= dt_max"),
    ],
)
def test_invalid_options_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S5(d_model=2, **kwargs)


def test_fused_scan_with_conj_sym_and_its_gradients_match_lti():
    # The fused route's real projections, doubled readout and both directions, and its gradients
    # with respect to every parameter, against the default route.
    H, P, L = 3, 8, 21
    params = random_params(H, P // 2, 2, seed=9)  # conjugate symmetry: P/2 states kept
    u = jnp.asarray(np.random.default_rng(9).normal(size=(2, L, H)))

    def value_and_grads(scan):
        layer = make_layer(H, P, conj_sym=True, bidirectional=True, scan=scan)
        loss = lambda p: jnp.sum(jnp.sin(layer.apply({"params": p}, u)))
        return jax.jit(jax.value_and_grad(loss))(params)

    value, grads = value_and_grads("lti")
    value_f, grads_f = value_and_grads("fused_interpret")
    np.testing.assert_allclose(value_f, value, rtol=1e-12)
    for k in grads:
        assert_rel_close(grads_f[k], grads[k], 1e-10)


@pytest.mark.parametrize(
    "P, available, kernel_calls",
    [
        (64, False, []),  # no GPU
        (64, True, [False]),  # a GPU, 32 states kept: the compiled kernel
        (16, True, []),  # a GPU, 8 states kept: under one kernel program's 32
    ],
)
def test_auto_scan_runs_the_fused_kernel_where_it_compiles_and_pays(monkeypatch, P, available, kernel_calls):
    import ssm_lra.ssm.pallas_common as pallas_common
    import ssm_lra.ssm.s5 as s5

    H, L = 2, 5
    params = random_params(H, P // 2, 2, seed=4)
    u = jnp.asarray(np.random.default_rng(4).normal(size=(2, L, H)))
    run = lambda scan: jax.jit(make_layer(H, P, bidirectional=True, scan=scan).apply)({"params": params}, u)
    calls = []

    def interpreted_fused_s5(*args, interpret):
        calls.append(interpret)
        return fused_s5(*args, interpret=True)  # the kernel itself cannot compile on a CPU

    fused_s5 = s5.fused_s5
    monkeypatch.setattr(s5, "fused_s5", interpreted_fused_s5)
    monkeypatch.setattr(pallas_common, "fused_scan_available", lambda: available)
    auto = run("auto")
    assert calls == kernel_calls  # the compiled kernel was asked for, or no kernel at all
    np.testing.assert_allclose(auto, run("lti"), rtol=1e-10)  # the same states either way


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the check is for machines without a GPU")
def test_fused_scan_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="GPU kernel.*use scan 'lti'"):
        S5(d_model=2, scan="fused")


def test_fused_kernel_lowers_to_triton_for_cuda():
    # Lowering for CUDA runs Pallas' Triton lowering of both kernels without a GPU.
    from jax import export

    from ssm_lra.ssm.lti_kernel import lti_scan_fused

    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    shapes = (f32(64), f32(64), f32(2, 40, 64), f32(2, 40, 64))
    loss = lambda *a: sum(jnp.sum(x**2) for x in lti_scan_fused(*a, reverse=True))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    module = export.export(grad, platforms=["cuda"], disabled_checks=[triton])(*shapes).mlir_module()
    assert "lti_scan_forward" in module and "lti_scan_backward" in module


def test_odd_blocks_allowed_without_conj_sym():
    S5(d_model=2, d_state=12, blocks=4, conj_sym=False)  # block size 3 is fine with the full state


def test_registry_names_and_configs():
    assert mixer_class("s5") is S5 and mixer_class("s5_ptd") is S5
    check_mixer_config("s5", 8, {"d_state": 16, "blocks": 2, "bidirectional": True})
    check_mixer_config("s5_ptd", 8, {"d_state": 32, "blocks": 2, "ssm_init": "ptd", "conj_sym": False, "clip_eigs": True})


def test_block_structure_of_dense_system():
    """Sanity: the init is the diagonalization of the dense block-diagonal HiPPO-N system."""
    P, J = 16, 4
    Lam, V, Vinv = block_diagonal_init("hippo", P, J, False)
    dense = scipy.linalg.block_diag(*([legs_normal_part(P // J)] * J))
    np.testing.assert_allclose((V * Lam) @ Vinv, dense, atol=1e-12)
