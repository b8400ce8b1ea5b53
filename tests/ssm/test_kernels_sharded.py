"""The fused scan kernels and the FFT convolution under data parallelism: on two CPU devices,
with the batch sharded, each device runs the kernel or the FFTs on its own share (no input
gathered onto every device), and values and gradients equal the one-device run. The kernels run
through Pallas' interpreter here; on a GPU the same shard_map (sharding.batch_parallel) splits the
Triton calls and the FFTs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ssm_lra.ssm.lti_kernel import lti_scan_fused
from ssm_lra.ssm.mamba import batched_selective_scan
from ssm_lra.ssm.conv import bidirectional_fft_conv
from ssm_lra.ssm.diagonal_scan import diagonal_scan_conv

assert jax.device_count() == 2
mesh = Mesh(np.array(jax.devices()), ("data",))
rng = np.random.default_rng(0)
Bz, L, E, N = 4, 12, 8, 4
cases = {
    "mamba": (lambda *a: batched_selective_scan(*a, scan="fused_interpret"),
              [rng.normal(size=(Bz, L, E)), rng.uniform(0.01, 1, size=(Bz, L, E)), -np.exp(rng.normal(size=(E, N))),
               rng.normal(size=(Bz, L, N)), rng.normal(size=(Bz, L, N)), rng.normal(size=E)]),
    "lti": (lambda *a: lti_scan_fused(*a, interpret=True, reverse=True, chunk=4),
            [rng.uniform(0.5, 0.9, size=E), rng.uniform(-0.3, 0.3, size=E), rng.normal(size=(Bz, L, E)), rng.normal(size=(Bz, L, E))]),
    # S4D's convolution as a recurrence: the system as real arrays (E, N2), made complex inside.
    **{f"s4d_scan_{grads}": (lambda u, ar, ai, w0r, w0i, w1r, w1i, grads=grads: diagonal_scan_conv(
                     u, jax.lax.complex(ar, ai), jax.lax.complex(w0r, w0i), jax.lax.complex(w1r, w1i), interpret=True, grads=grads),
                 [rng.normal(size=(Bz, L, E)), -rng.uniform(0.05, 0.5, size=(E, 3)), rng.normal(size=(E, 3)),
                  *rng.normal(size=(4, E, 3))]) for grads in ("kernel", "fft")},
    # 4 rows: two a device, paired as one complex signal; 6 rows: three a device, each alone.
    "fft_paired": (bidirectional_fft_conv, [rng.normal(size=(4, L, E)), rng.normal(size=(E, L)), rng.normal(size=(E, L))]),
    "fft_alone": (bidirectional_fft_conv, [rng.normal(size=(6, L, E)), rng.normal(size=(E, L)), rng.normal(size=(E, L))]),
}
for name, (fn, inputs) in cases.items():
    inputs = [jnp.asarray(x, jnp.float32) for x in inputs]
    loss = lambda *a: sum(jnp.sum(jnp.sin(y)) for y in jax.tree.leaves(fn(*a)))
    step = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(inputs)))))
    one_device = step(*inputs)
    sharded = [jax.device_put(x, NamedSharding(mesh, P("data") if x.ndim == 3 else P())) for x in inputs]
    with jax.set_mesh(mesh):  # as the training engine runs its steps
        two_devices = step(*sharded)
        gathers = "all-gather" in step.lower(*sharded).compile().as_text()
    worst = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                for a, b in zip(jax.tree.leaves(two_devices), jax.tree.leaves(one_device)))
    print(f"{name} {worst:.3e} {gathers}")
'''


def test_fused_kernels_split_the_batch_across_devices():
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert set(results) == {"mamba", "lti", "s4d_scan_kernel", "s4d_scan_fft", "fft_paired", "fft_alone"}
    for name, result in results.items():
        worst, gathers = result.split()
        assert float(worst) < 1e-5, (name, worst)
        assert gathers == "False", f"{name}: an input was gathered onto every device"
