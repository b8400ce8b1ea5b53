"""trainer.triton_gemm and trainer.dot_merger: which runs ask XLA for cuBLAS products or unmerged
products, and how the flags reach XLA."""

from __future__ import annotations

import pytest
from jax._src import xla_bridge
from omegaconf import OmegaConf

from ssm_lra.engine.xla_options import (
    DOT_MERGER_FLAG,
    TRITON_GEMM_FLAG,
    apply_xla_options,
    config_xla_flags,
    dot_merger_enabled,
    triton_gemm_enabled,
)
from ssm_lra.errors import ConfigError
from tests.test_experiments import PAIRS, composed


def expected_triton(model, task):
    # cuBLAS for S4 and for S4D / S4-PTD wherever their presets run the FFT (all but Path-X, which
    # runs the chunks); XLA's Triton GEMMs for S5, S5-PTD and Mamba.
    return model not in ("s4", "s4d", "s4_ptd") or (model != "s4" and task == "pathx")


@pytest.mark.parametrize("model,task", PAIRS, ids=[f"{m}/{t}" for m, t in PAIRS])
def test_auto_flags_of_each_preset(model, task):
    # The presets convolve by chunks only at S4D / S4-PTD Path-X: unmerged products there.
    cfg = OmegaConf.to_container(composed([f"experiment={model}/{task}"]), resolve=True)
    chunked = model in ("s4d", "s4_ptd") and task == "pathx"
    assert triton_gemm_enabled(cfg["trainer"]["triton_gemm"], cfg["model"]) == expected_triton(model, task)
    assert dot_merger_enabled(cfg["trainer"]["dot_merger"], cfg["model"]) is not chunked
    flags = config_xla_flags(cfg["trainer"], cfg["model"])
    assert (f"{TRITON_GEMM_FLAG}=false" in flags) is not expected_triton(model, task)
    assert (f"{DOT_MERGER_FLAG}=0" in flags) is chunked


@pytest.mark.parametrize("d_state, conv, triton, merged", [
    (4, "auto", True, False), (32, "auto", True, False), (64, "auto", False, True), (4, "fft", False, True),
    (64, "chunked", True, False), (64, "scan", True, True),
])
def test_auto_follows_the_s4d_route(d_state, conv, triton, merged):
    model = {"name": "s4d", "mixer": {"d_state": d_state, "conv": conv}}
    assert triton_gemm_enabled("auto", model) is triton
    assert triton_gemm_enabled(not triton, model) is (not triton)
    assert dot_merger_enabled("auto", model) is merged
    assert dot_merger_enabled(not merged, model) is (not merged)


def test_recurrent_mixers_keep_both_defaults():
    s5 = {"name": "s5", "mixer": {}}
    assert triton_gemm_enabled("auto", s5) is True and dot_merger_enabled("auto", s5) is True


def test_bad_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="trainer.triton_gemm must be auto, true or false, got 'yes'"):
        triton_gemm_enabled("yes", {"name": "s4"})
    from ssm_lra.engine.setup import check_config

    with pytest.raises(ConfigError, match="trainer.triton_gemm must be auto"):
        check_config(composed(["experiment=s4d/listops", "trainer.triton_gemm=yes"]))
    with pytest.raises(ConfigError, match="trainer.dot_merger must be auto, true or false, got 'off'"):
        check_config(composed(["experiment=s4d/listops", "trainer.dot_merger=off"]))


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


def test_both_flags_reach_xla_and_the_users_own_value_wins(monkeypatch):
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    chunked = {"name": "s4d", "mixer": {"d_state": 4, "conv": "chunked"}}
    env = {}
    apply_xla_options({"triton_gemm": False}, chunked, env)
    assert env == {"XLA_FLAGS": f"{TRITON_GEMM_FLAG}=false {DOT_MERGER_FLAG}=0"}
    env = {"XLA_FLAGS": f"{DOT_MERGER_FLAG}=32"}
    apply_xla_options({}, chunked, env)
    assert env == {"XLA_FLAGS": f"{DOT_MERGER_FLAG}=32"}
    env = {}
    apply_xla_options({"dot_merger": True}, chunked, env)
    assert env == {}
