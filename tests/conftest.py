"""One compilation cache for the whole test session: the end-to-end tests start many training
processes of the same tiny models, and each would otherwise compile them again. The test processes
themselves (each xdist worker) use the same folder, so that a program compiled by one test (the
same train step in several engine tests, an eval step a training subprocess already compiled) is
loaded instead of compiled again by the next. Nothing outlives the session: the folder is new and
removed at the end (unless SSM_LRA_COMPILATION_CACHE was set by the caller).

The suite is bound by XLA's CPU compilations, so they skip LLVM's optimizations
(--xla_backend_optimization_level=0 in XLA_FLAGS, inherited by the workers and by every training
process a test starts): about 40% less compile time for the same values (XLA CPU keeps strict
floating point either way). A level the caller put in XLA_FLAGS wins."""

import os
import shutil
import tempfile

_OWNED = []


def _is_xdist_controller(config) -> bool:
    """The process that only hands tests to xdist workers (it runs none, so needs no JAX)."""
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


CPU_OPTIMIZATION_FLAG = "--xla_backend_optimization_level"


def pytest_configure(config):
    flags = os.environ.get("XLA_FLAGS", "")
    if CPU_OPTIMIZATION_FLAG not in flags and not hasattr(config, "workerinput"):
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_OPTIMIZATION_FLAG}=0".strip()
    # xdist workers inherit the controller's environment, so only the controller makes the folder.
    if "SSM_LRA_COMPILATION_CACHE" not in os.environ and not hasattr(config, "workerinput"):
        folder = tempfile.mkdtemp(prefix="ssm_lra-test-compilation-")
        os.environ["SSM_LRA_COMPILATION_CACHE"] = folder
        _OWNED.append(folder)
    if not _is_xdist_controller(config):
        # Before any test compiles anything: JAX decides once, at the first compilation, whether
        # the persistent cache is on.
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["SSM_LRA_COMPILATION_CACHE"])


def pytest_unconfigure(config):
    for folder in _OWNED:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("SSM_LRA_COMPILATION_CACHE", None)
