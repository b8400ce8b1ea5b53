"""Fourier-mode noise: the pure noise function (frequency, amplitude, padding), the sweep on a
trained run, the peak-frequency pick and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from ssm_lra.robustness import default_frequencies, fourier_noise, main, noise_phases, noisy_accuracy
from tests.test_plots import assert_valid_png
from tests.trained_run import shared_smoke_run


def test_noise_has_the_requested_frequency_and_amplitude():
    rng = np.random.default_rng(0)
    L, eps = 256, 0.3
    x = rng.normal(1.0, 2.0, size=(3, L, 1))
    mask = np.ones((3, L))
    for f in (1, 5, 17, 100):
        noise = fourier_noise(x, mask, eps, f, phase=rng.uniform(0, 2 * np.pi, 3))
        spectrum = np.abs(np.fft.rfft(noise[..., 0], axis=-1))
        assert (spectrum.argmax(-1) == f).all()
        # A sinusoid of amplitude a has |DFT| = a L / 2 at its frequency and nothing elsewhere.
        np.testing.assert_allclose(spectrum[:, f] * 2 / L, eps * x[..., 0].std(-1), rtol=1e-9)
        np.testing.assert_allclose(np.delete(spectrum, f, axis=-1), 0, atol=1e-9)


def test_noise_follows_each_sequences_real_length_and_spares_padding():
    L, n, f = 128, 64, 3
    x = np.zeros((1, L, 2))
    x[0, :n] = np.random.default_rng(1).normal(size=(n, 2))
    mask = np.zeros((1, L))
    mask[0, :n] = 1
    noise = fourier_noise(x, mask, 1.0, f, phase=np.array([0.4]))
    assert noise.shape == x.shape and (noise[0, n:] == 0).all()
    np.testing.assert_array_equal(noise[..., 0], noise[..., 1])  # every channel alike
    assert np.abs(np.fft.rfft(noise[0, :n, 0])).argmax() == f  # f cycles over the n real positions
    np.testing.assert_allclose(np.abs(noise[0, :n, 0]).max(), x[0, :n].std(), rtol=0.02)


def test_no_noise_at_eps_zero_or_at_frequency_zero_with_phase_zero():
    x = np.random.default_rng(2).normal(size=(2, 50, 1))
    mask = np.ones((2, 50))
    assert not fourier_noise(x, mask, 0.0, 7, phase=np.array([1.0, 2.0])).any()
    assert not fourier_noise(x, mask, 0.8, 0, phase=np.zeros(2)).any()


def test_default_frequencies_and_phases():
    assert default_frequencies(1024) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    p = noise_phases(10, seed=3)
    np.testing.assert_array_equal(p, noise_phases(10, seed=3))
    assert ((0 <= p) & (p < 2 * np.pi)).all() and not np.array_equal(p, noise_phases(10, seed=4))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return shared_smoke_run(tmp_path_factory)


def test_accuracy_is_unchanged_without_noise_and_changed_by_it(smoke):
    from ssm_lra.evaluate import load_run, make_predict, predict_split

    run_dir, cache_dir = smoke
    run = load_run(run_dir, "best", [f"data.cache_dir={cache_dir}"])
    predict = make_predict(run.plan.model)
    summary = json.loads((run_dir / "summary.json").read_text())
    n = len(run.data.splits["test"])
    args = dict(split="test", limit=None, predict=predict, bar=None)
    assert noisy_accuracy(run, eps=0.0, freq=5, phases=noise_phases(n, 0), **args) == summary["test_accuracy"]
    assert noisy_accuracy(run, eps=0.7, freq=0, phases=np.zeros(n), **args) == summary["test_accuracy"]
    clean, _ = predict_split(run, "test", predict=predict)
    phases = noise_phases(n, 0)
    noisy, _ = predict_split(
        run, "test", predict=predict,
        transform=lambda x, m, i: (x + fourier_noise(x, m, 2.0, 8, phases[i : i + len(x)])).astype(np.float32),
    )
    assert np.abs(noisy - clean).max() > 1e-4  # the noise reaches the model


def test_command_writes_json_and_plot(smoke, tmp_path, capsys):
    run_dir, cache_dir = smoke
    out = tmp_path / "out"
    code = main([str(run_dir), "--eps", "0.5", "1", "--freqs", "0", "1", "8", "--worst-case", "2",
                 "--out", str(out), "--set", f"data.cache_dir={cache_dir}"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "robustness.json").read_text())
    (record,) = result["runs"]
    # The test split was read into memory once for the sweep: the same accuracy as training's.
    assert record["clean_accuracy"] == json.loads((run_dir / "summary.json").read_text())["test_accuracy"]
    assert record["freqs"] == [0, 1, 8] and set(record["accuracy"]) == {"0.5", "1"}
    assert all(len(v) == 3 and all(0 <= a <= 1 for a in v) for v in record["accuracy"].values())
    worst = record["worst_case"]
    assert len(worst["freqs"]) == 2 and all(1 <= f <= 512 for f in worst["freqs"])
    assert worst["first_layer_gain"][0] >= worst["first_layer_gain"][1]
    assert_valid_png(out / "robustness.png")


def test_token_tasks_and_bad_frequencies_are_clear_errors(smoke, tmp_path, capsys):
    from ssm_lra.preview import compose_config

    run_dir = tmp_path / "listops_run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(["trainer=smoke", "task=listops"]), run_dir / ".hydra" / "config.yaml")
    assert main([str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "token inputs" in err and "pathfinder" in err
    assert main([str(smoke[0]), "--freqs", "600", "--set", f"data.cache_dir={smoke[1]}"]) == 2
    assert "outside 0 .. 512" in capsys.readouterr().err
