"""Tests of the perturb-then-diagonalize (PTD) init of HiPPO-LegS.

What is checked against what: the closed-form objective gradient against finite differences; the
eigenpairs against the real block form they come from and against a general eigensolver run on
A + E; the size of E and the conditioning of V against the published ranges; the transfer function
of the diagonal system against LegS's own (dense solves) and against S5/S4D's normal-part init;
the on-disk cache and the shipped files against a fresh computation.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.optimize

from ssm_lra.ssm import ptd
from ssm_lra.ssm.hippo import hippo_legs, hippo_legs_normal_eig, hippo_legs_nplr
from ssm_lra.ssm.ptd import (
    PACKAGE_SIZES,
    cache_path,
    eig_from_real_form,
    normal_part_real_form,
    optimize_ptd,
    ptd_conj_half,
    ptd_diagonal_system,
    ptd_eig,
    ptd_objective,
    times_block_matrix,
)


def pack(W, a, b, r):
    return np.concatenate([W.ravel(), a, b, r])


# ----------------------------------------------------------------------------------------------
# The optimization problem


@pytest.mark.parametrize("N", [1, 2, 5, 8])
def test_objective_gradient_matches_finite_differences(N):
    A, _ = hippo_legs(N)
    rng = np.random.default_rng(N)
    z = pack(*normal_part_real_form(N)) + 0.1 * rng.normal(size=N * N + N)
    f = lambda z: ptd_objective(z, A, 7.0)[0]  # noqa: E731
    g = lambda z: ptd_objective(z, A, 7.0)[1]  # noqa: E731
    assert scipy.optimize.check_grad(f, g, z) < 1e-5 * max(np.linalg.norm(g(z)), 1.0)


@pytest.mark.parametrize("N", [1, 4, 7, 16])
def test_warm_start_is_the_normal_part_in_real_block_form(N):
    W, a, b, r = normal_part_real_form(N)
    np.testing.assert_allclose(W.T @ W, np.eye(N), atol=1e-12)  # orthogonal: kappa4 = 1
    S, _, _ = hippo_legs_nplr(N)
    np.testing.assert_allclose(times_block_matrix(W, a, b, r) @ W.T, S, atol=1e-12 * N)
    A, _ = hippo_legs(N)
    f, _ = ptd_objective(pack(W, a, b, r), A, 1.0)
    P = np.sqrt(np.arange(N) + 0.5)
    assert f == pytest.approx(1.0 + np.linalg.norm(np.outer(P, P)) / np.linalg.norm(A), rel=1e-10)


# ----------------------------------------------------------------------------------------------
# The result: A + E = V diag(Lambda) V^-1


@pytest.mark.parametrize("N", [1, 3, 7, *PACKAGE_SIZES])
def test_eigendecomposition_reconstructs_A_plus_E(N):
    A, _ = hippo_legs(N)
    Lam, V, info = ptd_eig(N)
    Vinv = np.linalg.inv(V)
    AE = (V * Lam) @ Vinv
    assert np.abs(AE.imag).max() < 1e-12 * np.abs(AE).max()  # a real matrix
    AE = AE.real
    E = AE - A
    assert np.linalg.norm(E, 2) / np.linalg.norm(A, 2) == pytest.approx(info["rel_E"], rel=1e-6)
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0, atol=1e-12)
    # An independent eigensolver on the reconstructed A + E finds the same spectrum ...
    ev = np.linalg.eigvals(AE)
    key = lambda x: np.lexsort((x.real.round(6), x.imag.round(6)))  # noqa: E731
    np.testing.assert_allclose(ev[key(ev)], Lam[key(Lam)], rtol=1e-8, atol=1e-8 * np.abs(Lam).max())
    # ... and the conjugate-half layout holds: Lambda[h:2h] and V[:, h:2h] conjugate the first half.
    h = N // 2
    np.testing.assert_array_equal(Lam[h : 2 * h], Lam[:h].conj())
    np.testing.assert_array_equal(V[:, h : 2 * h], V[:, :h].conj())
    assert np.all(Lam[:h].imag >= 0)


@pytest.mark.parametrize("N", PACKAGE_SIZES)
def test_condition_number_and_perturbation_size(N):
    """The shipped sizes: cond(V) small (published ~5-8), ||E||/||A|| a few % (published 3-10%),
    every real part <= -1/2. The numbers are printed (pytest -s) for the record."""
    Lam, V, info = ptd_eig(N)
    A, _ = hippo_legs(N)
    print(
        f"PTD N={N}: cond(V)={info['cond_V']:.2f} ||E||/||A||={info['rel_E']:.4f} "
        f"max Re={info['max_real_part']:.3f} (LegS itself: cond(V)={np.linalg.cond(np.linalg.eig(A)[1]):.1e})"
    )
    assert info["cond_V"] == pytest.approx(np.linalg.cond(V), rel=1e-8)
    assert info["cond_V"] < 10  # (the brief's bound: 100)
    assert 0.02 < info["rel_E"] < (0.2 if N == 2 else 0.1)
    assert np.all(Lam.real <= -0.5 + 1e-9)


def test_diagonalizing_legs_directly_is_ill_conditioned():
    """The reason for PTD: the eigenvector matrix of LegS itself is numerically singular by N=32."""
    A, _ = hippo_legs(32)
    assert np.linalg.cond(np.linalg.eig(A)[1]) > 1e10
    assert ptd_eig(32)[2]["cond_V"] < 10


@pytest.mark.parametrize("N", [16, 64, 128])
def test_transfer_function_closer_to_legs_than_normal_part_init(N):
    """G(iw) = C (iw - A)^-1 B on a frequency grid: the PTD diagonal system C V (iw - Lambda)^-1
    V^-1 B stays close to LegS's, the normal-part (S4D-LegS / S5 HiPPO-N) one does not."""
    A, B = hippo_legs(N)
    C = np.random.default_rng(N).normal(size=(3, N))
    w = np.concatenate([-np.logspace(-2, 4, 120)[::-1], [0.0], np.logspace(-2, 4, 120)])
    s = 1j * w
    G_legs = np.stack([C @ np.linalg.solve(si * np.eye(N) - A, B) for si in s])

    def diagonal_G(Lam, V, Vinv):
        return ((C @ V)[None] * ((Vinv @ B)[None, None, :] / (s[:, None, None] - Lam))).sum(-1)

    Lam, V, _ = ptd_eig(N)
    G_ptd = diagonal_G(Lam, V, np.linalg.inv(V))
    Lam_n, V_n = hippo_legs_normal_eig(N)
    G_normal = diagonal_G(Lam_n, V_n, V_n.conj().T)
    err = lambda G: np.abs(G - G_legs).max() / np.abs(G_legs).max()  # noqa: E731
    print(f"transfer function N={N}: relative sup error PTD {err(G_ptd):.3f}, normal part {err(G_normal):.3f}")
    assert err(G_ptd) < 0.75  # 0.29, 0.40, 0.52 for N = 16, 64, 128; the normal part: 2.5-4
    assert err(G_ptd) < err(G_normal) / 4


def test_conjugate_half_and_diagonal_system():
    N = 16
    Lam_h, V_h, Vinv_h = ptd_conj_half(N)
    Lam, V, _ = ptd_eig(N)
    np.testing.assert_array_equal(Lam_h, Lam[: N // 2])
    np.testing.assert_allclose(Vinv_h @ V_h, np.eye(N // 2), atol=1e-12)
    _, B = hippo_legs(N)
    Lam_s, Bt = ptd_diagonal_system(N)
    np.testing.assert_array_equal(Lam_s, Lam_h)
    # the dropped half is the conjugate: x = 2 Re(V_h x~_h) recovers the real input vector
    np.testing.assert_allclose(2 * (V_h @ Bt).real, B, atol=1e-10 * np.abs(B).max())
    with pytest.raises(ValueError, match="even"):
        ptd_conj_half(7)
    with pytest.raises(ValueError, match="positive integer"):
        ptd_eig(0)


# ----------------------------------------------------------------------------------------------
# Cache


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty SSM_LRA_CACHE and an empty in-memory cache (before and after)."""
    monkeypatch.setenv("SSM_LRA_CACHE", str(tmp_path))
    ptd._cached_ptd.cache_clear()
    yield tmp_path
    ptd._cached_ptd.cache_clear()


def test_cache_round_trip(fresh_cache, monkeypatch):
    N, gamma = 6, 7.5  # not shipped: computed, then written under $SSM_LRA_CACHE/ptd/
    Lam, V, info = ptd_eig(N, gamma=gamma)
    assert info["source"] == "computed"
    path = cache_path(N, gamma)
    assert path.parent == fresh_cache / "ptd" and path.exists()
    assert os.listdir(path.parent) == [path.name]  # no temporary files left behind

    ptd._cached_ptd.cache_clear()
    monkeypatch.setattr(ptd, "optimize_ptd", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    Lam2, V2, info2 = ptd_eig(N, gamma=gamma)
    assert info2["source"] == "cache"
    np.testing.assert_array_equal(Lam2, Lam)
    np.testing.assert_array_equal(V2, V)
    assert {k: info2[k] for k in ptd.INFO_KEYS} == {k: info[k] for k in ptd.INFO_KEYS}


def test_unreadable_cache_file_is_recomputed(fresh_cache):
    N, gamma = 4, 7.5
    path = cache_path(N, gamma)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz file")
    Lam, _, info = ptd_eig(N, gamma=gamma)
    assert info["source"] == "computed"
    ptd._cached_ptd.cache_clear()
    assert ptd_eig(N, gamma=gamma)[2]["source"] == "cache"  # rewritten, atomically


def test_shipped_files_are_found_and_reproducible(fresh_cache):
    for N in PACKAGE_SIZES:
        assert ptd_eig(N)[2]["source"] == "package"
    assert not (fresh_cache / "ptd").exists()  # nothing written for shipped sizes
    # write_package_data(sizes) regenerates them: the small ones agree with a fresh computation.
    for N in (2, 16):
        Lam, _, info = ptd_eig(N)
        form, fresh = optimize_ptd(N)
        Lam_fresh = eig_from_real_form(*form)[0]
        # L-BFGS-B on a non-convex objective: scipy/numpy versions move the optimum slightly (1e-4
        # relative seen between scipy releases), never the shape of the spectrum.
        np.testing.assert_allclose(Lam_fresh, Lam, rtol=2e-3, atol=2e-3)
        assert fresh["cond_V"] == pytest.approx(info["cond_V"], rel=1e-4)
