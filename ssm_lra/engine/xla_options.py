"""XLA settings a run's config decides. XLA reads its flags once, when JAX starts its backend, so
they are put into the environment before anything asks for a device."""

from __future__ import annotations

import logging
import os
from typing import Mapping, MutableMapping

from ssm_lra.errors import ConfigError

log = logging.getLogger(__name__)

TRITON_GEMM_FLAG = "--xla_gpu_enable_triton_gemm"
# Models whose FFT routes ran faster with every matrix product in cuBLAS than with XLA's Triton GEMM
# fusions (H200, results/bench/NOTES.md lever 20: S4D Pathfinder +7%, S4 Pathfinder +6%, S4 Path-X
# +5.5%). The convolution by chunks is the opposite: its batched products lost 42% in cuBLAS.
CUBLAS_MODELS = ("s4", "s4d", "s4_ptd")


def triton_gemm_enabled(setting, model_cfg: Mapping) -> bool:
    """`trainer.triton_gemm`: true / false as given; auto is false (cuBLAS) for the models of
    CUBLAS_MODELS on an FFT route, true otherwise. Only GPUs read the flag."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ConfigError(f"trainer.triton_gemm must be auto, true or false, got {setting!r}.")
    if model_cfg.get("name") not in CUBLAS_MODELS:
        return True
    mixer = model_cfg.get("mixer") or {}
    if "conv" not in mixer:  # S4: always an FFT convolution
        return False
    from ssm_lra.ssm.s4d import resolve_conv

    return resolve_conv(mixer["conv"], mixer.get("d_state", 64), on_gpu=True) != "fft"


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
