"""XLA settings a run's config decides. XLA reads its flags once, when JAX starts its backend, so
they are put into the environment before anything asks for a device."""

from __future__ import annotations

import logging
import os
from typing import Mapping, MutableMapping

from ssm_lra.errors import ConfigError

log = logging.getLogger(__name__)

TRITON_GEMM_FLAG = "--xla_gpu_enable_triton_gemm"


def triton_gemm_enabled(setting, model_cfg: Mapping) -> bool:
    """`trainer.triton_gemm`: true / false as given; auto is false (cuBLAS) for the models on an FFT
    route (S4; S4D and S4-PTD where their `conv` resolves to the FFT on a GPU), true otherwise.
    Measured on an H200 (results/bench/NOTES.md lever 20): the FFT routes ran faster with every
    product in cuBLAS than with XLA's Triton GEMM fusions (S4D Pathfinder +7%, S4 Pathfinder +6%,
    S4 Path-X +5.5%); the convolution by chunks lost 42% there, and the S5 family moved by -1.5 to
    +3% on five of its six presets (+8% on the sixth, S5-PTD Pathfinder). Only GPUs read the flag."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ConfigError(f"trainer.triton_gemm must be auto, true or false, got {setting!r}.")
    from ssm_lra.ssm import convolution_route

    return convolution_route(model_cfg.get("name"), model_cfg.get("mixer") or {}, on_gpu=True) != "fft"


def apply_xla_options(trainer_cfg: Mapping, model_cfg: Mapping, environ: MutableMapping = os.environ) -> None:
    """Add the config's XLA flags to XLA_FLAGS; a flag the user already set there wins."""
    flags = environ.get("XLA_FLAGS", "")
    if triton_gemm_enabled(trainer_cfg.get("triton_gemm", "auto"), model_cfg) or TRITON_GEMM_FLAG in flags:
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        import jax

        if jax.default_backend() == "gpu":
            log.warning("trainer.triton_gemm: JAX's backend started before the config was read; "
                        "XLA keeps its Triton GEMMs in this process.")
        return
    environ["XLA_FLAGS"] = f"{flags} {TRITON_GEMM_FLAG}=false".strip()
    log.info("trainer.triton_gemm: XLA_FLAGS += %s=false (cuBLAS matrix products on a GPU)", TRITON_GEMM_FLAG)
