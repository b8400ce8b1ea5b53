"""Sequence mixers: one file per model family, each a flax module mapping (B, L, H) -> (B, L, H).

The contract every mixer keeps:
- it is built as ``cls(d_model=H, **mixer_config)`` and checks its options on construction
  (ValueError), so bad configs fail before anything is traced;
- it is called as ``mixer(u, mask=mask)`` with u (B, L, H) and mask (B, L) (1 = real position,
  0 = padding at the end; padded inputs are already zero); outputs at real positions must not
  depend on what lies in the padding;
- its class has ``SSM_PARAM_NAMES``: the leaf names of the parameters (A, B, step size) that get
  the SSM learning rate and no weight decay;
- ``routes()`` says which route its settings take on this backend where they leave a choice.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Mapping

import flax.linen as nn

from ssm_lra.errors import ConfigError


class Mixer(nn.Module):
    """Base of the mixers: options are checked on construction (`check_options`, ValueError), so a
    bad config fails before anything is traced or compiled."""

    def __post_init__(self):
        self.check_options()
        super().__post_init__()

    def check_options(self) -> None:
        """Raise ValueError for an invalid option; each mixer checks its own."""

    def routes(self) -> dict[str, str]:
        """How this layer computes on the backend at hand, where a setting leaves the choice to
        "auto" or names one of several routes to the same output (e.g. {"conv": "chunked"}): what
        the bench records and training prints. Empty where there is nothing to choose."""
        return {}

    @property
    def channels(self) -> int:
        """Output channels of the SSM: 2 with a backward (anti-causal) copy, else 1."""
        return 2 if getattr(self, "bidirectional", False) else 1

# model name -> (module, class). Several names may share a class and differ in their init
# (s5 / s5_ptd, s4d / s4_ptd): conf/model/<name>.yaml says how.
MIXERS = {
    "s4": ("ssm_lra.ssm.s4", "S4"),
    "s4d": ("ssm_lra.ssm.s4d", "S4D"),
    "s4_ptd": ("ssm_lra.ssm.s4d", "S4D"),
    "s5": ("ssm_lra.ssm.s5", "S5"),
    "s5_ptd": ("ssm_lra.ssm.s5", "S5"),
    "mamba": ("ssm_lra.ssm.mamba", "Mamba"),
}


def mixer_class(name: str):
    if name not in MIXERS:
        raise ConfigError(
            f"unknown model '{name}'. Available models: {', '.join(sorted(MIXERS))} (choose with model=<name>)."
        )
    module_name, class_name = MIXERS[name]
    return getattr(importlib.import_module(module_name), class_name)


def convolution_route(name: str, mixer_config: Mapping, on_gpu: bool) -> str | None:
    """How a model's layers convolve: "fft" for S4; for S4D and S4-PTD their `conv` as resolved on
    this backend ("fft", "chunked" or "scan"); None for the recurrent mixers (S5, Mamba) and
    unknown names. Settings that suit one route (cuBLAS products, the GLU's split) ask here."""
    if name == "s4":
        return "fft"
    if name not in MIXERS or MIXERS[name][1] != "S4D":
        return None
    from ssm_lra.ssm.s4d import S4D, resolve_conv

    return resolve_conv(mixer_config.get("conv", S4D.conv), mixer_config.get("d_state", S4D.d_state), on_gpu)


def check_mixer_config(name: str, d_model: int, config: dict) -> None:
    """Unknown keys in model.mixer end in a ConfigError listing the valid ones, before any tracing."""
    cls = mixer_class(name)
    valid = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "d_model"}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise ConfigError(
            f"model.mixer has unknown key(s) {unknown} for model '{name}'. Valid keys: {sorted(valid)}."
        )
    try:
        cls(d_model=d_model, **config)  # mixers check their options on construction
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.mixer for model '{name}': {e}") from None
