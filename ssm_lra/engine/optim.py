"""Optimizer with parameter groups, as the S4 and S5 papers train:

- "ssm": the SSM's A, B and step size at their own (smaller) learning rate, no weight decay;
- "no_decay": norms, biases and other vectors at the main learning rate, no weight decay;
- "decay": every other weight matrix, AdamW with weight decay;
- "ssm_decay" (only when asked for): SSM parameters at the SSM learning rate *with* weight decay.
Both learning rates follow the same warmup + cosine (or constant) schedule.

Which parameters are "SSM parameters" is the mixer's `SSM_PARAM_NAMES` unless
`optimizer.ssm_param_names` lists the leaf names itself, and `optimizer.decay_param_names` names
leaves that take weight decay whatever their group or shape. Together they express the S5 run
scripts' per-task `opt_config` and `dt_global` choices (S5's names: log_step is our log_dt):
- standard: the defaults (B, Lambda, log_dt at ssm_lr, no decay; C at lr with decay);
- BfastandCdecay (ListOps, Image): ssm_param_names [Lambda_re, Lambda_im, log_dt], so B joins the
  weight matrices (main lr, weight decay);
- BandCdecay (Path-X): decay_param_names [B], so B stays at ssm_lr but is decayed;
- dt_global (Text, Retrieval): ssm_param_names [Lambda_re, Lambda_im, B] and decay_param_names
  [log_dt], so the step trains at the main lr with weight decay.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax

from ssm_lra.errors import ConfigError

SCHEDULES = ("cosine", "constant")


GROUP_NAME_KEYS = ("ssm_param_names", "decay_param_names")


def leaf_name(path: tuple) -> str:
    return getattr(path[-1], "key", str(path[-1]))


def param_label(
    path: tuple, leaf: jax.Array, ssm_names: frozenset[str], decay_names: frozenset[str] = frozenset()
) -> str:
    name = leaf_name(path)
    decayed = name in decay_names
    if name in ssm_names:
        return "ssm_decay" if decayed else "ssm"
    if leaf.ndim <= 1 and not decayed:
        return "no_decay"
    return "decay"


def param_labels(params, ssm_names: frozenset[str], decay_names: frozenset[str] = frozenset()):
    return jax.tree_util.tree_map_with_path(lambda p, x: param_label(p, x, ssm_names, decay_names), params)


def group_names(cfg: Mapping[str, Any], params, mixer_ssm_names: frozenset[str]) -> tuple[frozenset, frozenset]:
    """(SSM names, decayed names) after optimizer.ssm_param_names / decay_param_names.

    A listed name that no parameter carries is almost certainly a typo that would silently leave
    the optimizer as it was, so it is an error that lists the names the model does have.
    """
    present = {leaf_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    chosen = {}
    for key in GROUP_NAME_KEYS:
        names = cfg.get(key)
        if names is None:
            chosen[key] = None
            continue
        names = frozenset(str(n) for n in names)
        missing = sorted(names - present)
        if missing:
            raise ConfigError(
                f"optimizer.{key} lists {missing}, but no parameter of this model has that name. "
                f"Parameter names: {sorted(present)}."
            )
        chosen[key] = names
    ssm_names = chosen["ssm_param_names"] if chosen["ssm_param_names"] is not None else mixer_ssm_names
    return frozenset(ssm_names), chosen["decay_param_names"] or frozenset()


def make_schedule(peak_lr: float, total_steps: int, warmup_steps: int, kind: str) -> optax.Schedule:
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    if kind == "constant":
        if warmup_steps == 0:
            return optax.constant_schedule(peak_lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak_lr, warmup_steps), optax.constant_schedule(peak_lr)],
            [warmup_steps],
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else peak_lr,
        peak_value=peak_lr,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=0.0,
    )


def validate_optimizer_config(cfg: Mapping[str, Any]) -> None:
    if cfg["schedule"] not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule={cfg['schedule']!r} is not one of {list(SCHEDULES)}.")
    for key in ("lr", "ssm_lr"):
        if not cfg[key] > 0:
            raise ConfigError(f"optimizer.{key} must be positive, got {cfg[key]}.")
    if cfg["weight_decay"] < 0:
        raise ConfigError(f"optimizer.weight_decay must be >= 0, got {cfg['weight_decay']}.")
    if cfg.get("grad_clip") is not None and not cfg["grad_clip"] > 0:
        raise ConfigError("optimizer.grad_clip must be positive, or null to turn clipping off.")
    for key in GROUP_NAME_KEYS:
        names = cfg.get(key)
        if names is None:
            continue
        if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__") or not all(isinstance(n, str) for n in names):
            raise ConfigError(
                f"optimizer.{key} must be a list of parameter leaf names (e.g. [Lambda_re, Lambda_im, log_dt]) "
                f"or null, got {names!r}."
            )


def build_optimizer(
    cfg: Mapping[str, Any], params, ssm_names: frozenset[str], total_steps: int, steps_per_epoch: int
) -> optax.GradientTransformation:
    validate_optimizer_config(cfg)
    warmup = int(cfg.get("warmup_steps") or 0) + int(round(float(cfg.get("warmup_epochs") or 0) * steps_per_epoch))
    b1, b2 = cfg["betas"]

    def adamw(lr, weight_decay):
        schedule = make_schedule(lr, total_steps, warmup, cfg["schedule"])
        return optax.adamw(schedule, b1=b1, b2=b2, eps=cfg.get("eps", 1e-8), weight_decay=weight_decay)

    ssm_names, decay_names = group_names(cfg, params, ssm_names)
    labels = param_labels(params, ssm_names, decay_names)
    groups = {
        "ssm": adamw(cfg["ssm_lr"], cfg.get("ssm_weight_decay", 0.0)),
        "no_decay": adamw(cfg["lr"], 0.0),
        "decay": adamw(cfg["lr"], cfg["weight_decay"]),
    }
    # Only when used: the optimizer state (and so every checkpoint) keeps its old structure otherwise.
    if "ssm_decay" in jax.tree_util.tree_leaves(labels):
        groups["ssm_decay"] = adamw(cfg["ssm_lr"], cfg["weight_decay"])
    tx = optax.multi_transform(groups, labels)
    if cfg.get("grad_clip") is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg["grad_clip"]), tx)
    return tx
