"""Look inside a trained run's SSM layers: `python -m ssm_lra.inspect_kernels RUN [checkpoint=best]`.

Writes into RUN/figures/, for every layer, init (build_state's step-0 parameters, the run's seed)
next to trained (the checkpoint):
- kernels.png: the convolution kernels (impulse responses): causal lags l >= 0, and for
  bidirectional layers the backward kernel at negative lags, which is where it acts;
- transfer.png: |G(f)|, the magnitude of the layer's frequency response (SSM kernel + skip D) at
  f cycles per sequence, f = 0 .. L/2: the gain a sinusoid of that frequency gets (the same f as in
  `python -m ssm_lra.robustness`);
- eigenvalues.png: the eigenvalues of the continuous state matrix A in the complex plane.

Kernels come from each layer's own computation: S4 / S4D / S4-PTD from their kernel functions
(`s4_kernel`, `s4d_kernel`), S5 / S5-PTD from the impulse response C~ Abar^l Bbar of their
discretized diagonal system (`s5_impulse_response`, checked in the tests against the S5 layer run
on an impulse). S5 mixes channels, so its kernel at each lag is an H x H matrix: kernels.png shows
the diagonal entries (channel h's response to its own input) and transfer.png the singular values
of G(f). Mamba's SSM depends on its input (no fixed kernel): only the eigenvalues of A are drawn.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ssm_lra.errors import UserError

SISO = ("s4", "s4d", "s4_ptd")  # H independent single-input single-output SSMs
MIMO = ("s5", "s5_ptd")  # one SSM over all channels
SELECTIVE = ("mamba",)  # input-dependent: no fixed kernel
MAX_MIMO_KERNEL_ELEMENTS = 1 << 27  # (channels, H, H, L) floats held at once (512 MiB)
SHOWN_CHANNELS = 4  # kernels drawn per panel: more lines would hide each other


# ----------------------------------------------------------------------------------------------
# Pure functions of a layer's parameters.


def s5_impulse_response(Lambda, B_tilde, C_tilde, log_dt, L: int, discretization="zoh", conj_sym=True, bidirectional=False):
    """The S5 layer's kernels without D: K (channels, H_out, H_in, L) real, with

        K[0][:, :, l] = s Re(C~_fwd diag(Lambda_bar^l) B_bar),   y_fwd[i] = sum_{j<=i} K[0][..., i-j] u[j],
        K[1][:, :, l] = s Re(C~_bwd diag(Lambda_bar^l) B_bar),   y_bwd[i] = sum_{j>=i} K[1][..., j-i] u[j],

    s = 2 under conjugate symmetry (the dropped conjugate half), else 1. This is what `apply_s5`'s
    scan computes, written as a convolution. Lambda (P2,), B_tilde (P2, H), C_tilde (H, channels*P2)
    complex; log_dt (P2,).
    """
    import jax.numpy as jnp

    from ssm_lra.ssm.discretize import DISCRETIZATIONS

    dt = jnp.exp(log_dt)
    Lambda_bar, B_bar = DISCRETIZATIONS[discretization](Lambda[:, None], B_tilde, dt[:, None])
    Lambda_bar = Lambda_bar[:, 0]
    P2 = Lambda.shape[0]
    channels = 2 if bidirectional else 1
    # Powers by exp(l log Lambda_bar) (as conv.vandermonde_kernel): no sequential products.
    log_bar = dt * Lambda if discretization == "zoh" else jnp.log(Lambda_bar)
    powers = jnp.exp(log_bar[:, None] * jnp.arange(L, dtype=jnp.real(log_bar).dtype))  # (P2, L)
    scale = 2.0 if conj_sym else 1.0
    kernels = [
        scale * jnp.einsum("hp,pl,pk->hkl", C_tilde[:, c * P2 : (c + 1) * P2], powers, B_bar).real for c in range(channels)
    ]
    return jnp.stack(kernels)


def frequency_response(kernels: np.ndarray, D: np.ndarray) -> np.ndarray:
    """The layer's frequency response at f = 0 .. L/2 cycles per sequence: the DFT of its causal
    kernel, plus the conjugate DFT of its anti-causal (backward) kernel, plus the skip D.

    A backward kernel k acts as y[i] = sum_m k[m] u[i+m], whose response is sum_m k[m] e^{+2 pi i f m / L}
    = conj(DFT(k)) for a real k. kernels (channels, H, L) (SISO) -> (H, F) complex;
    (channels, H, H, L) (MIMO) -> (F, H, H) complex.
    """
    kernels = np.asarray(kernels, np.float64)
    spectra = np.fft.rfft(kernels, axis=-1)
    response = spectra[0] + (np.conj(spectra[1]) if len(spectra) > 1 else 0.0)
    D = np.asarray(D, np.float64)
    if kernels.ndim == 3:
        return response + D[:, None]
    response = np.moveaxis(response, -1, 0)  # (F, H, H)
    return response + np.diag(D)[None]


def response_gain(response: np.ndarray, direction: np.ndarray | None = None) -> np.ndarray:
    """|G(f) w| for each frequency: the amplitude that a sinusoid entering along `direction` w (H,)
    leaves the layer with (w = ones / sqrt(H) when not given). SISO (H, F) or MIMO (F, H, H) -> (F,)."""
    H = response.shape[0] if response.ndim == 2 else response.shape[-1]
    w = np.ones(H) / np.sqrt(H) if direction is None else np.asarray(direction, np.float64)
    out = response * w[:, None] if response.ndim == 2 else np.einsum("fhk,k->fh", response, w).T
    return np.linalg.norm(out, axis=0)


def peak_frequencies(gain: np.ndarray, k: int, exclude_dc: bool = True) -> list[int]:
    """The k frequencies (cycles per sequence) of largest gain, largest first; the constant (f = 0)
    is left out by default, since a constant shift is an offset, not an oscillation."""
    gain = np.asarray(gain, np.float64)
    candidates = np.arange(1 if exclude_dc else 0, len(gain))
    order = candidates[np.argsort(-gain[candidates], kind="stable")]
    return [int(f) for f in order[:k]]


# ----------------------------------------------------------------------------------------------
# From a model's parameter tree to each layer's kernels, response and eigenvalues.


def mixer_parameters(params: Mapping, model_name: str, layer: int) -> dict:
    """The mixer's parameters in block `layer` (flax names the mixer after its class: `S4D_0`)."""
    from ssm_lra.ssm import mixer_class

    name = mixer_class(model_name).__name__ + "_0"
    block = params[f"block_{layer}"]
    if name not in block:
        raise UserError(f"block_{layer} has no {name} parameters (found {sorted(block)}): not a {model_name} model.")
    return dict(block[name])


def layer_kernels(model_name: str, mixer_cfg: Mapping[str, Any], p: Mapping, L: int) -> np.ndarray | None:
    """The layer's convolution kernels from its own kernel computation: (channels, H, L) for S4 and
    S4D, (channels, H, H, L) for S5, None for Mamba (input dependent)."""
    import jax.numpy as jnp

    if model_name == "s4":
        from ssm_lra.ssm.s4 import s4_kernel

        return np.asarray(s4_kernel(p["log_dt"], p["log_A_real"], p["A_imag"], p["P"], p["B"], p["C"], L))
    if model_name in SISO:
        from ssm_lra.ssm.s4d import s4d_kernel

        return np.asarray(
            s4d_kernel(p["log_dt"], p["log_A_real"], p["A_imag"], p["B"], p["C"], L, mixer_cfg.get("discretization", "zoh"))
        )
    if model_name in MIMO:
        from ssm_lra.ssm.s4d import as_complex
        from ssm_lra.ssm.s5 import state_matrix

        cfg = {"discretization": "zoh", "conj_sym": True, "bidirectional": False, "clip_eigs": False, **mixer_cfg}
        Lambda = state_matrix(jnp.asarray(p["Lambda_re"]), jnp.asarray(p["Lambda_im"]), bool(cfg["clip_eigs"]))
        return np.asarray(
            s5_impulse_response(
                Lambda,
                as_complex(jnp.asarray(p["B"])),
                as_complex(jnp.asarray(p["C"])),
                jnp.asarray(p["log_dt"]),
                L,
                cfg["discretization"],
                bool(cfg["conj_sym"]),
                bool(cfg["bidirectional"]),
            )
        )
    return None


def state_eigenvalues(model_name: str, mixer_cfg: Mapping[str, Any], p: Mapping) -> np.ndarray:
    """Eigenvalues of the continuous A, flattened. Diagonal models store one of each conjugate pair
    (S4D, S5 with conj_sym): those are shown (the upper half-plane). S4's A = Lambda - P P^H is not
    diagonal: its eigenvalues are computed from the full N x N matrix of each channel."""
    if model_name == "s4":
        from ssm_lra.ssm.s4 import conjugate_pairs

        lam = np.asarray(conjugate_pairs(-np.exp(p["log_A_real"]) + 1j * p["A_imag"]))
        P = np.asarray(conjugate_pairs(p["P"][..., 0] + 1j * p["P"][..., 1]))
        A = lam[:, :, None] * np.eye(lam.shape[-1]) - P[:, :, None] * P[:, None, :].conj()
        eig = np.linalg.eigvals(A.astype(np.complex128))
        return eig[eig.imag >= 0].ravel()  # the real system's eigenvalues pair up: keep one half
    if model_name in SISO:
        return (-np.exp(p["log_A_real"]) + 1j * p["A_imag"]).ravel()
    if model_name in MIMO:
        re = np.asarray(p["Lambda_re"], np.float64)
        if mixer_cfg.get("clip_eigs"):
            from ssm_lra.ssm.s5 import CLIP_REAL

            re = np.minimum(re, CLIP_REAL)  # what the forward pass uses
        return (re + 1j * np.asarray(p["Lambda_im"])).ravel()
    if model_name in SELECTIVE:
        return (-np.exp(np.asarray(find_selective_a_log(p), np.float64))).ravel().astype(np.complex128)
    raise UserError(f"no eigenvalues for model {model_name!r}")


def find_selective_a_log(block_params: Mapping) -> np.ndarray:
    """Mamba keeps A_log in a nested SelectiveSSM module: find it wherever it sits."""
    for key, value in block_params.items():
        if key == "A_log":
            return np.asarray(value)
        if isinstance(value, Mapping):
            found = find_selective_a_log(value)
            if found is not None:
                return found
    return None


@dataclasses.dataclass
class LayerView:
    """What the figures show of one layer."""

    layer: int
    kernels: np.ndarray | None  # see layer_kernels
    response: np.ndarray | None  # see frequency_response
    eigenvalues: np.ndarray


def layer_views(model_name: str, mixer_cfg: Mapping[str, Any], params: Mapping, n_layers: int, L: int) -> list[LayerView]:
    views = []
    for layer in range(n_layers):
        if model_name in SELECTIVE:
            views.append(LayerView(layer, None, None, eig_of(model_name, mixer_cfg, params, layer)))
            continue
        p = mixer_parameters(params, model_name, layer)
        kernels = layer_kernels(model_name, mixer_cfg, p, L)
        response = frequency_response(kernels, p["D"])
        views.append(LayerView(layer, kernels, response, state_eigenvalues(model_name, mixer_cfg, p)))
    return views


def input_direction(params: Mapping, model_cfg: Mapping[str, Any], batch_stats: Mapping | None = None) -> np.ndarray:
    """How a change of a real-valued input reaches the first mixer: the encoder's weights (1 -> H),
    times the first norm's per-channel scale when the blocks normalize before the mixer (prenorm;
    batch norm in evaluation mode is a fixed affine map, layer norm is taken as its learned scale)."""
    w = np.asarray(params["encoder"]["kernel"], np.float64).sum(axis=0)  # (C, H) -> (H,): all input channels alike
    if model_cfg.get("prenorm"):
        norm = params["block_0"].get("Norm_0", {})
        if "BatchNorm_0" in norm:
            scale = np.asarray(norm["BatchNorm_0"]["scale"], np.float64)
            var = np.asarray(batch_stats["block_0"]["Norm_0"]["BatchNorm_0"]["var"], np.float64) if batch_stats else 1.0
            w = w * scale / np.sqrt(var + 1e-5)
        elif "LayerNorm_0" in norm:
            w = w * np.asarray(norm["LayerNorm_0"]["scale"], np.float64)
    return w


def first_layer_gain(run) -> np.ndarray:
    """|G_1(f) w| of a loaded run (evaluate.LoadedRun): the gain of its first SSM layer, at each
    frequency f = 0 .. L/2, for a sinusoid added to the input (w = input_direction)."""
    name = run.model_name
    if name in SELECTIVE:
        raise UserError("Mamba's SSM depends on its input: it has no fixed transfer function to find the peaks of.")
    model_cfg = run.plan.cfg.model
    view = layer_views(name, dict(model_cfg.mixer), run.state.params, 1, run.plan.spec.seq_len)[0]
    return response_gain(view.response, input_direction(run.state.params, model_cfg, run.state.batch_stats))


# ----------------------------------------------------------------------------------------------
# Figures.


def _symlog_lags(ax, L: int, bidirectional: bool):
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(-(L - 1) if bidirectional else 0, L - 1)
    ax.axvline(0, color="0.8", lw=0.5)


def shown_channels(H: int, n: int = SHOWN_CHANNELS) -> np.ndarray:
    return np.unique(np.linspace(0, H - 1, min(n, H)).round().astype(int))


def kernel_traces(kernels: np.ndarray) -> np.ndarray:
    """(channels, H, L) per-channel kernels; for MIMO kernels the diagonal entries h -> h."""
    if kernels.ndim == 4:
        return np.stack([np.diagonal(k, axis1=0, axis2=1).T for k in kernels])
    return kernels


def plot_kernels(path: Path, columns: Sequence[tuple[str, list[LayerView]]], title: str) -> None:
    """One row per layer, one column per parameter set (init, trained): the kernels of a few
    channels, forward at lags >= 0 and backward at lags <= 0."""
    import matplotlib.pyplot as plt

    from ssm_lra.plot_runs import save_figure

    n_layers = len(columns[0][1])
    fig, axes = plt.subplots(n_layers, len(columns), figsize=(5 * len(columns), 2.2 * n_layers + 0.6), squeeze=False, sharex=True)
    for col, (name, views) in enumerate(columns):
        for row, view in enumerate(views):
            ax = axes[row, col]
            traces = kernel_traces(view.kernels)
            L = traces.shape[-1]
            lags = np.arange(L)
            for i, h in enumerate(shown_channels(traces.shape[1])):
                color = plt.cm.viridis(i / max(SHOWN_CHANNELS - 1, 1))
                ax.plot(lags, traces[0, h], color=color, lw=0.8, label=f"channel {h}" if row == 0 and col == 0 else None)
                if len(traces) > 1:
                    ax.plot(-lags, traces[1, h], color=color, lw=0.8)
            _symlog_lags(ax, L, len(traces) > 1)
            ax.set_title(f"layer {view.layer}, {name}", fontsize=9)
            ax.tick_params(labelsize=7)
        axes[-1, col].set_xlabel("lag (backward kernel at negative lags)", fontsize=8)
    fig.legend(loc="upper right", fontsize=7, ncol=min(SHOWN_CHANNELS, 6))
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    save_figure(fig, path)


def gain_curves(response: np.ndarray) -> np.ndarray:
    """Magnitudes to draw: |G_h(f)| per channel (SISO, (H, F)), or the singular values of G(f)
    (MIMO, (F, H, H) -> (H, F))."""
    if response.ndim == 2:
        return np.abs(response)
    return np.linalg.svd(response, compute_uv=False).T


def plot_transfer(path: Path, columns: Sequence[tuple[str, list[LayerView]]], title: str, mimo: bool) -> None:
    """One row per layer: |G(f)| against f (cycles per sequence), log-log; the median over channels
    (or singular values) and the band of all of them."""
    import matplotlib.pyplot as plt

    from ssm_lra.plot_runs import save_figure

    n_layers = len(columns[0][1])
    fig, axes = plt.subplots(n_layers, len(columns), figsize=(5 * len(columns), 2.2 * n_layers + 0.6), squeeze=False, sharex=True, sharey="row")
    what = "singular values of G(f)" if mimo else "|G_h(f)| over channels h"
    for col, (name, views) in enumerate(columns):
        for row, view in enumerate(views):
            ax = axes[row, col]
            curves = gain_curves(view.response)
            f = np.arange(curves.shape[-1])[1:]  # log axis: f = 0 (the constant) is left out
            curves = curves[:, 1:]
            ax.fill_between(f, curves.min(0), curves.max(0), color="tab:blue", alpha=0.2, lw=0, label="min - max" if row == col == 0 else None)
            ax.plot(f, np.median(curves, 0), color="tab:blue", lw=1.2, label="median" if row == col == 0 else None)
            ax.plot(f, curves.max(0), color="tab:red", lw=0.6, label="max" if row == col == 0 else None)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"layer {view.layer}, {name}", fontsize=9)
            ax.tick_params(labelsize=7)
        axes[-1, col].set_xlabel("frequency f (cycles per sequence)", fontsize=8)
    for row in range(n_layers):
        axes[row, 0].set_ylabel("|G(f)|", fontsize=8)
    fig.legend(loc="upper right", fontsize=7, ncol=3)
    fig.suptitle(f"{title}: {what}", fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    save_figure(fig, path)


def plot_eigenvalues(path: Path, init: list[LayerView], trained: list[LayerView], title: str) -> None:
    """One panel per layer: eigenvalues of A, init (grey) and trained (colour), Im on a symlog axis
    (HiPPO-type inits spread the frequencies over orders of magnitude)."""
    import matplotlib.pyplot as plt

    from ssm_lra.plot_runs import save_figure

    n = len(trained)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows + 0.4), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, before, after in zip(axes.ravel(), init, trained):
        ax.scatter(before.eigenvalues.real, before.eigenvalues.imag, s=6, marker="x", color="0.6", lw=0.6, label="init")
        ax.scatter(after.eigenvalues.real, after.eigenvalues.imag, s=5, color="tab:orange", alpha=0.7, label="trained")
        ax.set_xscale("symlog", linthresh=1e-2)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.axvline(0, color="0.8", lw=0.5)
        ax.set_title(f"layer {after.layer}", fontsize=9)
        ax.set_xlabel("Re", fontsize=8)
        ax.set_ylabel("Im", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{title}: eigenvalues of A", fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    save_figure(fig, path)


def inspect_run(run_dir: str | Path, kind: str = "best", out: str | Path | None = None) -> list[Path]:
    """Write the figures of a run (see the module docstring); returns their paths."""
    from ssm_lra.evaluate import load_run
    from ssm_lra.plot_runs import use_headless_backend

    use_headless_backend()
    run = load_run(run_dir, kind, with_data=False)
    name, cfg = run.model_name, run.plan.cfg.model
    mixer_cfg, n_layers, L = dict(cfg.mixer), int(cfg.n_layers), int(run.plan.spec.seq_len)
    out = Path(out) if out else run.run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    title = f"{name} on {run.plan.spec.name}, '{kind}' checkpoint (step {run.step}) vs init"
    written = []
    if name in MIMO and 2 * int(cfg.d_model) ** 2 * L > MAX_MIMO_KERNEL_ELEMENTS:
        print(
            f"note: {name} kernels at d_model={cfg.d_model}, L={L} hold {2 * int(cfg.d_model) ** 2 * L:,} values: "
            "too many to draw; drawing the eigenvalues of A only.",
            flush=True,
        )
        L = 0
    if name in SELECTIVE:
        print("note: Mamba's SSM depends on its input (no fixed kernel or transfer function): drawing the eigenvalues of A only.", flush=True)
    if L and name not in SELECTIVE:
        init = layer_views(name, mixer_cfg, run.init_state.params, n_layers, L)
        trained = layer_views(name, mixer_cfg, run.state.params, n_layers, L)
        columns = [("init", init), (f"trained, step {run.step}", trained)]
        plot_kernels(out / "kernels.png", columns, title + (" (diagonal entries h->h)" if name in MIMO else ""))
        plot_transfer(out / "transfer.png", columns, title, name in MIMO)
        written += [out / "kernels.png", out / "transfer.png"]
    else:
        init = [LayerView(i, None, None, eig_of(name, mixer_cfg, run.init_state.params, i)) for i in range(n_layers)]
        trained = [LayerView(i, None, None, eig_of(name, mixer_cfg, run.state.params, i)) for i in range(n_layers)]
    plot_eigenvalues(out / "eigenvalues.png", init, trained, title)
    written.append(out / "eigenvalues.png")
    return written


def eig_of(model_name: str, mixer_cfg: Mapping, params: Mapping, layer: int) -> np.ndarray:
    if model_name in SELECTIVE:
        return state_eigenvalues(model_name, mixer_cfg, params[f"block_{layer}"])
    return state_eigenvalues(model_name, mixer_cfg, mixer_parameters(params, model_name, layer))


USAGE = "usage: python -m ssm_lra.inspect_kernels RUN [checkpoint=best|latest] [out=DIR]"


def main(argv: Sequence[str] | None = None) -> int:
    from ssm_lra.evaluate import parse_key_values

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\n\n" + __doc__)
        return 0
    runs = [a for a in argv if "=" not in a]
    try:
        args, _ = parse_key_values([a for a in argv if "=" in a], {"run_dir": None, "checkpoint": "best", "out": None})
        runs += [args["run_dir"]] if args["run_dir"] else []
        if not runs:
            raise UserError(f"name a run directory. {USAGE}")
        for run_dir in runs:
            for path in inspect_run(run_dir, args["checkpoint"], args["out"]):
                print(f"wrote {path}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
