"""From a composed config to the pieces of a run, shared by training, evaluation and benchmarks.

`check_config` judges everything the config alone decides (no data, nothing compiled), so a bad
config ends with one clear message before any slow work. `build_state` then makes the optimizer
and the step-0 train state once the training set's size is known. `load_run_config` reads a run
directory's saved config back.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssm_lra.errors import ConfigError, UserError


@dataclasses.dataclass
class Plan:
    """A checked config: plain-dict sections, the task's spec and the (unbound) model."""

    cfg: DictConfig
    task: dict
    data: dict
    trainer: dict
    spec: Any
    model: Any


def resolved_task_config(cfg: DictConfig) -> dict:
    """The task config as a dict; with data.tiny, the task's `tiny` values replace the full ones."""
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    if cfg.data.get("tiny") and task_cfg.get("tiny"):
        tiny = dict(task_cfg["tiny"])
        task_cfg["seq_len"] = tiny.pop("seq_len", task_cfg.get("seq_len"))
        if "generate" in task_cfg:
            task_cfg["generate"] = {**task_cfg["generate"], **tiny}
    return task_cfg


def validate_trainer(trainer: dict) -> None:
    for key in ("batch_size", "log_every"):
        if not isinstance(trainer[key], int) or trainer[key] < 1:
            raise ConfigError(f"trainer.{key} must be a positive integer, got {trainer[key]!r}.")


def check_config(cfg: DictConfig) -> Plan:
    from ssm_lra.data.tasks import task_spec
    from ssm_lra.engine.optim import validate_optimizer_config
    from ssm_lra.model import build_model

    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    validate_trainer(trainer)
    validate_optimizer_config(cfg.optimizer)
    task_cfg = resolved_task_config(cfg)
    spec = task_spec(task_cfg)
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), spec)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    return Plan(cfg=cfg, task=task_cfg, data=data_cfg, trainer=trainer, spec=spec, model=model)


def build_state(plan: Plan, num_train: int):
    """(schedule, optimizer, step-0 train state) for a training set of `num_train` examples.

    The state is a pure function of the seed: parameters from one half of PRNGKey(seed), the
    dropout stream from the other.
    """
    import jax

    from ssm_lra.engine.loop import Schedule
    from ssm_lra.engine.optim import build_optimizer
    from ssm_lra.engine.steps import init_state, init_variables
    from ssm_lra.ssm import mixer_class

    cfg = plan.cfg
    schedule = Schedule.from_config(plan.trainer, num_train)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    variables = init_variables(plan.model, plan.spec, plan.trainer["batch_size"], init_rng)
    ssm_names = mixer_class(cfg.model.name).SSM_PARAM_NAMES
    tx = build_optimizer(cfg.optimizer, variables["params"], ssm_names, schedule.total_steps, schedule.steps_per_epoch)
    return schedule, tx, init_state(variables, tx, dropout_rng)


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The composed config a run saved (`.hydra/config.yaml`), with a clear error if there is none."""
    path = Path(run_dir).expanduser() / ".hydra" / "config.yaml"
    if not Path(run_dir).expanduser().is_dir():
        raise UserError(f"{run_dir} is not a run directory (no such folder).")
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory: {path} is missing (it is written by `python -m ssm_lra.train`).")
    return OmegaConf.load(path)
