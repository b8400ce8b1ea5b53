"""Kernel inspection: the kernels drawn are each layer's own kernels (S4, S4D through their kernel
functions, S5 as the impulse response of its scan), frequency responses are the DFTs of the
bidirectional convolution, and the command writes valid PNGs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_lra import inspect_kernels as ik
from ssm_lra.ssm.s4 import S4
from ssm_lra.ssm.s4d import S4D
from ssm_lra.ssm.s5 import S5
from tests.test_plots import assert_valid_png
from tests.trained_run import shared_smoke_run

L, H = 16, 3


def init(layer, L=L):
    u = jnp.zeros((1, L, layer.d_model))
    return layer.init(jax.random.PRNGKey(0), u)["params"]


def impulse_output(layer, params, position: int, channel: int, L=L):
    """The layer's output (L, H) for a unit impulse at `position` in input `channel`."""
    u = np.zeros((1, L, layer.d_model), np.float32)
    u[0, position, channel] = 1.0
    return np.asarray(layer.apply({"params": params}, jnp.asarray(u)))[0]


def kernel_prediction(kernels, D, position, channel, L=L):
    """What the convolution with kernels (channels, H_out[, H_in], L) gives for that impulse:
    forward kernel at lags i - position >= 0, backward kernel at lags position - i >= 0, plus D."""
    k = kernels if kernels.ndim == 4 else np.einsum("chl,hk->chkl", kernels, np.eye(kernels.shape[1]))
    y = np.zeros((L, k.shape[1]))
    for i in range(L):
        if i >= position:
            y[i] += k[0, :, channel, i - position]
        if len(k) > 1 and i <= position:
            y[i] += k[1, :, channel, position - i]
    y[position, channel] += D[channel]
    return y


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_kernel_is_the_layers_own(bidirectional, discretization):
    layer = S4D(d_model=H, d_state=8, bidirectional=bidirectional, discretization=discretization)
    params = init(layer)
    cfg = {"bidirectional": bidirectional, "discretization": discretization}
    kernels = ik.layer_kernels("s4d", cfg, params, L)
    np.testing.assert_array_equal(kernels, np.asarray(layer.apply({"params": params}, L, method=S4D.kernel)))
    # The drawing's convention (backward kernel at negative lags) is how the layer applies it.
    for position, channel in ((0, 0), (7, 2), (L - 1, 1)):
        np.testing.assert_allclose(
            impulse_output(layer, params, position, channel),
            kernel_prediction(kernels, np.asarray(params["D"]), position, channel), atol=2e-5,
        )


def test_s4_kernel_is_the_layers_own():
    layer = S4(d_model=H, d_state=8, bidirectional=True)
    params = init(layer)
    kernels = ik.layer_kernels("s4", {}, params, L)
    np.testing.assert_array_equal(kernels, np.asarray(layer.apply({"params": params}, L, method=S4.kernel)))
    np.testing.assert_allclose(
        impulse_output(layer, params, 5, 1), kernel_prediction(kernels, np.asarray(params["D"]), 5, 1), atol=2e-5
    )


@pytest.mark.parametrize("conj_sym,ssm_init,blocks", [(True, "hippo", 1), (False, "ptd", 2)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_s5_impulse_response_is_what_the_scan_computes(conj_sym, ssm_init, blocks, bidirectional):
    cfg = {"d_state": 8, "blocks": blocks, "conj_sym": conj_sym, "ssm_init": ssm_init, "bidirectional": bidirectional,
           "clip_eigs": not conj_sym}
    layer = S5(d_model=H, **cfg)
    params = init(layer)
    kernels = ik.layer_kernels("s5_ptd", cfg, params, L)
    assert kernels.shape == (2 if bidirectional else 1, H, H, L)
    for position, channel in ((0, 0), (6, 1), (L - 1, 2)):
        np.testing.assert_allclose(
            impulse_output(layer, params, position, channel),
            kernel_prediction(kernels, np.asarray(params["D"]), position, channel), atol=2e-5,
        )


def test_frequency_response_is_the_dft_of_the_bidirectional_convolution():
    rng = np.random.default_rng(0)
    kernels, D = rng.normal(size=(2, H, L)), rng.normal(size=H)
    response = ik.frequency_response(kernels, D)
    lags = np.arange(L)
    for f in range(L // 2 + 1):
        wave = np.exp(-2j * np.pi * f * lags / L)
        direct = kernels[0] @ wave + kernels[1] @ np.conj(wave) + D
        np.testing.assert_allclose(response[:, f], direct, atol=1e-9)
    # The same kernels as a diagonal MIMO system: diagonal responses, the same gain.
    mimo = np.einsum("chl,hk->chkl", kernels, np.eye(H))
    response_mimo = ik.frequency_response(mimo, D)
    np.testing.assert_allclose(np.diagonal(response_mimo, axis1=1, axis2=2).T, response, atol=1e-9)
    w = rng.normal(size=H)
    np.testing.assert_allclose(ik.response_gain(response_mimo, w), ik.response_gain(response, w))


def test_peak_frequencies_leave_out_the_constant():
    gain = np.array([9.0, 1.0, 5.0, 2.0, 7.0])
    assert ik.peak_frequencies(gain, 2) == [4, 2]
    assert ik.peak_frequencies(gain, 1, exclude_dc=False) == [0]


def test_mamba_has_eigenvalues_only():
    from ssm_lra.data.tasks import TaskSpec
    from ssm_lra.model import build_model

    spec = TaskSpec("toy", 8, 2, None)
    cfg = {"name": "mamba", "d_model": 8, "n_layers": 1, "norm": "layer", "prenorm": True, "activation": "none",
           "dropout": 0.0, "pooling": "mean", "mixer": {"d_state": 4}}
    model = build_model(cfg, spec)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 1)), jnp.ones((1, 8)))["params"]
    views = ik.layer_views("mamba", cfg["mixer"], params, 1, 8)
    assert all(v.kernels is None for v in views)
    eig = views[0].eigenvalues
    assert eig.size == 2 * 8 * 4 and (eig.real < 0).all() and (eig.imag == 0).all()  # E = 2 H, N = 4


def test_command_draws_the_runs_own_kernels(tmp_path_factory, monkeypatch, capsys):
    """The arrays handed to the kernel plot are the S4D layers' `kernel(L)` for the init and the
    trained parameters; the files are valid PNGs."""
    run_dir, _ = shared_smoke_run(tmp_path_factory)
    captured = {}
    original = ik.plot_kernels

    def spy(path, columns, title):
        captured["columns"] = columns
        return original(path, columns, title)

    monkeypatch.setattr(ik, "plot_kernels", spy)
    out = tmp_path_factory.mktemp("figures")
    assert ik.main([str(run_dir), f"out={out}"]) == 0, capsys.readouterr().err
    for name in ("kernels.png", "transfer.png", "eigenvalues.png"):
        assert_valid_png(out / name)

    from ssm_lra.evaluate import load_run

    run = load_run(run_dir, "best", with_data=False)
    mixer = S4D(d_model=int(run.plan.cfg.model.d_model), **dict(run.plan.cfg.model.mixer))
    (init_name, init_views), (_, trained_views) = captured["columns"]
    assert init_name == "init" and len(trained_views) == 2
    for params, views in ((run.init_state.params, init_views), (run.state.params, trained_views)):
        for layer, view in enumerate(views):
            own = mixer.apply({"params": params[f"block_{layer}"]["S4D_0"]}, 1024, method=S4D.kernel)
            np.testing.assert_array_equal(view.kernels, np.asarray(own))
