"""One benchmark job in its own process: `python -m ssm_lra.bench.worker JOB_JSON OUT_JSON`.

JOB_JSON is {"kind": "environment", "ceiling_size": "auto"|"small"|"full"} (device, versions and
measured ceilings) or {"kind": "experiment", "experiment": "s5/listops", "overrides": [...],
"warmup": 3, "steps": 20, "ceilings": {...} | null}. The result is written to OUT_JSON after each
part, so that a process killed half way still leaves what it measured. Failures are recorded in
the result (status "OOM", "config error" or "failed" with the message), never raised: the parent
reads the file, whatever happened.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from ssm_lra import atomic

OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM when allocating")


def failure_status(error: BaseException) -> str:
    """"OOM" for the device running out of memory (at compile or run time), else "failed"."""
    from ssm_lra.errors import UserError

    if isinstance(error, UserError):
        return "config error"
    text = f"{type(error).__name__}: {error}"
    return "OOM" if any(marker in text for marker in OOM_MARKERS) else "failed"


def short_error(error: BaseException, limit: int = 600) -> str:
    """The exception's type and the start of its message (XLA's messages run to pages)."""
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def environment(ceiling_size: str) -> dict:
    import flax
    import jax
    import jaxlib
    import optax

    from ssm_lra.bench.roofline import measure_ceilings

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    small = ceiling_size == "small" or (ceiling_size == "auto" and device.platform == "cpu")
    return {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "device_memory_bytes": stats.get("bytes_limit"),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "flax_version": flax.__version__,
        "optax_version": optax.__version__,
        "python_version": platform.python_version(),
        "ceilings": measure_ceilings(small=small),
        "ceiling_size": "small" if small else "full",
    }


def run_experiment(job: dict, out: Path) -> None:
    from ssm_lra.bench.measure import compose_config, measure_layer, measure_train_step
    from ssm_lra.engine.setup import check_config

    row: dict = {"experiment": job["experiment"], "overrides": job["overrides"], "status": "running"}
    started = time.perf_counter()

    def save():
        row["worker_wall_s"] = time.perf_counter() - started
        atomic.write_json(out, row)

    try:
        cfg = compose_config(job["experiment"], job["overrides"])
        plan = check_config(cfg)
    except Exception as e:  # a bad override or preset: nothing to measure
        row.update(status="config error", error=short_error(e))
        save()
        return
    row.update(
        model=str(cfg.model.name),
        task=str(cfg.task.name),
        d_model=int(cfg.model.d_model),
        n_layers=int(cfg.model.n_layers),
        batch_size=int(plan.trainer["batch_size"]),
        seq_len=int(plan.spec.seq_len),
        precision=plan.trainer.get("precision", "float32"),
        accumulate_grad_batches=int(plan.trainer.get("accumulate_grad_batches") or 1),
        xla_flags=os.environ.get("XLA_FLAGS", ""),  # with the config's own (trainer.triton_gemm, trainer.dot_merger)
        routes=plan.model.routes(),  # what "auto" settings resolved to on this device
    )
    save()
    try:
        row["step"] = measure_train_step(plan, job["warmup"], job["steps"])
        row["status"] = "ok"
    except Exception as e:
        row.update(status=failure_status(e), error=short_error(e))
        traceback.print_exc()
    save()
    # The layer is measured even when the whole step failed: a block alone may fit where the
    # model does not. It runs after the step so that the step's peak memory is its own.
    try:
        row["layer"] = measure_layer(plan, job.get("ceilings"), job["warmup"], job["steps"])
        row["layer_status"] = "ok"
    except Exception as e:
        row.update(layer_status=failure_status(e), layer_error=short_error(e))
        traceback.print_exc()
    save()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m ssm_lra.bench.worker JOB_JSON OUT_JSON", file=sys.stderr)
        return 2
    job, out = json.loads(argv[0]), Path(argv[1])
    if job["kind"] == "environment":
        atomic.write_json(out, environment(job.get("ceiling_size", "auto")))
    elif job["kind"] == "experiment":
        run_experiment(job, out)
    else:
        print(f"unknown job kind {job['kind']!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
