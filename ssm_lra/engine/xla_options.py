"""XLA settings a run's config decides. XLA reads its flags once, when JAX starts its backend, so
they are put into the environment before anything asks for a device. Only GPUs read these flags."""

from __future__ import annotations

import logging
import os
from typing import Mapping, MutableMapping

from ssm_lra.errors import ConfigError

log = logging.getLogger(__name__)

TRITON_GEMM_FLAG = "--xla_gpu_enable_triton_gemm"
DOT_MERGER_FLAG = "--xla_gpu_dot_merger_threshold_mb"


def _route(model_cfg: Mapping) -> str | None:
    from ssm_lra.ssm import convolution_route

    return convolution_route(model_cfg.get("name"), model_cfg.get("mixer") or {}, on_gpu=True)


def _checked(setting, key: str):
    if not isinstance(setting, bool) and setting != "auto":
        raise ConfigError(f"trainer.{key} must be auto, true or false, got {setting!r}.")
    return setting


def triton_gemm_enabled(setting, model_cfg: Mapping) -> bool:
    """`trainer.triton_gemm`: true / false as given; auto is false (cuBLAS) for the models on an FFT
    route (S4; S4D and S4-PTD where their `conv` resolves to the FFT on a GPU), true otherwise.
    Measured on an H200 (results/bench/NOTES.md lever 20): the FFT routes ran faster with every
    product in cuBLAS than with XLA's Triton GEMM fusions (S4D Pathfinder +7%, S4 Pathfinder +6%,
    S4 Path-X +5.5%); the convolution by chunks lost 42% there, and the S5 family moved by -1.5 to
    +3% on five of its six presets (+8% on the sixth, S5-PTD Pathfinder)."""
    setting = _checked(setting, "triton_gemm")
    return setting if isinstance(setting, bool) else _route(model_cfg) != "fft"


def dot_merger_enabled(setting, model_cfg: Mapping) -> bool:
    """`trainer.dot_merger`: whether XLA may merge matrix products that share an input into one.
    auto is off for the convolution by chunks (S4D and S4-PTD where `conv` resolves to "chunked"),
    on otherwise. There XLA merges the within-chunk product with the chunk states' product, and the
    backward pass then concatenates their two cotangents into one array: a copy of every layer's
    activations. Measured on an H200 (NOTES.md lever 27): S4D ListOps at the reference configuration
    4,327 and 4,326 seq/s against 4,163 with the merger (+3.9%); no change on the FFT route (S4D
    Pathfinder 7,508 against 7,557), where it was left on."""
    setting = _checked(setting, "dot_merger")
    return setting if isinstance(setting, bool) else _route(model_cfg) != "chunked"


def config_xla_flags(trainer_cfg: Mapping, model_cfg: Mapping) -> list[str]:
    """The flags the config asks for, each as `--name=value`; raises ConfigError on a bad setting."""
    flags = []
    if not triton_gemm_enabled(trainer_cfg.get("triton_gemm", "auto"), model_cfg):
        flags.append(f"{TRITON_GEMM_FLAG}=false")
    if not dot_merger_enabled(trainer_cfg.get("dot_merger", "auto"), model_cfg):
        flags.append(f"{DOT_MERGER_FLAG}=0")
    return flags


def apply_xla_options(trainer_cfg: Mapping, model_cfg: Mapping, environ: MutableMapping = os.environ) -> None:
    """Add the config's XLA flags to XLA_FLAGS; a flag the user already set there wins."""
    flags = environ.get("XLA_FLAGS", "")
    wanted = [f for f in config_xla_flags(trainer_cfg, model_cfg) if f.split("=")[0] not in flags]
    if not wanted:
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        import jax

        if jax.default_backend() == "gpu":
            log.warning("trainer.triton_gemm / trainer.dot_merger: JAX's backend started before the config "
                        "was read; XLA keeps its default for %s in this process.", " ".join(wanted))
        return
    environ["XLA_FLAGS"] = " ".join([flags] + wanted).strip()
    log.info("XLA_FLAGS += %s (trainer.triton_gemm / trainer.dot_merger; only GPUs read them)", " ".join(wanted))
