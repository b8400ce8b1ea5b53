"""trainer.triton_gemm: which runs ask XLA for cuBLAS products, and how the flag reaches XLA."""

from __future__ import annotations

import pytest
from jax._src import xla_bridge
from omegaconf import OmegaConf

from ssm_lra.engine.xla_options import TRITON_GEMM_FLAG, apply_xla_options, triton_gemm_enabled
from ssm_lra.errors import ConfigError
from tests.test_experiments import PAIRS, composed


def expected_triton(model, task):
    # cuBLAS for S4 and for S4D / S4-PTD wherever their presets run the FFT (all but Path-X, which
    # runs the chunks); XLA's Triton GEMMs for S5, S5-PTD and Mamba.
    return model not in ("s4", "s4d", "s4_ptd") or (model != "s4" and task == "pathx")


@pytest.mark.parametrize("model,task", PAIRS, ids=[f"{m}/{t}" for m, t in PAIRS])
def test_auto_asks_for_cublas_on_the_fft_routes(model, task):
    cfg = OmegaConf.to_container(composed([f"experiment={model}/{task}"]), resolve=True)
    assert triton_gemm_enabled(cfg["trainer"]["triton_gemm"], cfg["model"]) == expected_triton(model, task)


@pytest.mark.parametrize("d_state, conv, triton", [(4, "auto", True), (32, "auto", True), (64, "auto", False),
                                                   (4, "fft", False), (64, "chunked", True)])
def test_auto_follows_the_s4d_route(d_state, conv, triton):
    model = {"name": "s4d", "mixer": {"d_state": d_state, "conv": conv}}
    assert triton_gemm_enabled("auto", model) is triton
    assert triton_gemm_enabled(not triton, model) is (not triton)


def test_bad_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="trainer.triton_gemm must be auto, true or false, got 'yes'"):
        triton_gemm_enabled("yes", {"name": "s4"})
    from ssm_lra.engine.setup import check_config

    with pytest.raises(ConfigError, match="trainer.triton_gemm must be auto"):
        check_config(composed(["experiment=s4d/listops", "trainer.triton_gemm=yes"]))


def test_flag_is_added_to_the_users_flags_before_the_backend_starts(monkeypatch):
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    s4 = {"name": "s4", "mixer": {}}
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}
    apply_xla_options({"triton_gemm": "auto"}, s4, env)
    assert env["XLA_FLAGS"] == f"--xla_dump_to=/tmp/d {TRITON_GEMM_FLAG}=false"
    env = {}
    apply_xla_options({}, s4, env)
    assert env == {"XLA_FLAGS": f"{TRITON_GEMM_FLAG}=false"}
    # The user's own choice wins; models that keep Triton add nothing.
    env = {"XLA_FLAGS": f"{TRITON_GEMM_FLAG}=true"}
    apply_xla_options({"triton_gemm": False}, s4, env)
    assert env == {"XLA_FLAGS": f"{TRITON_GEMM_FLAG}=true"}
    env = {}
    apply_xla_options({"triton_gemm": "auto"}, {"name": "s5", "mixer": {}}, env)
    assert env == {}


def test_flag_is_not_added_once_the_backend_runs(monkeypatch):
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    env = {}
    apply_xla_options({"triton_gemm": False}, {"name": "s4"}, env)
    assert env == {}
