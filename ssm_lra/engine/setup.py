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


NONFINITE_POLICIES = ("skip", "stop")


def _positive_int_or_none(trainer: dict, key: str) -> None:
    value = trainer.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(f"trainer.{key} must be a positive integer or null, got {value!r}.")


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def check_known_keys(section: str, given: dict, defaults_file: Path) -> None:
    """Keys added with `+section.key=...` that the code never reads (typos) are an error, not ignored.

    The defaults file of the group is the one list of valid keys."""
    if not defaults_file.is_file():
        return
    known = set(OmegaConf.to_container(OmegaConf.load(defaults_file)))
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {section}; valid keys: {', '.join(sorted(known))}.")


def validate_trainer(trainer: dict, devices: int = 1, processes: int = 1) -> None:
    """The trainer section, including that every batch splits evenly over the devices."""
    from ssm_lra.engine.distributed import check_batch_sizes
    from ssm_lra.engine.loop import eval_settings

    check_known_keys("trainer", trainer, CONF_DIR / "trainer" / "default.yaml")

    for key in ("batch_size", "log_every"):
        if not isinstance(trainer[key], int) or isinstance(trainer[key], bool) or trainer[key] < 1:
            raise ConfigError(f"trainer.{key} must be a positive integer, got {trainer[key]!r}.")
    for key in ("eval_batch_size", "max_steps", "eval_every_steps", "checkpoint_every_steps",
                "limit_train_batches", "limit_eval_batches", "max_nonfinite_steps"):
        _positive_int_or_none(trainer, key)
    accumulate = trainer.get("accumulate_grad_batches") or 1
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches must be a positive integer, got {accumulate!r}.")
    if trainer.get("nonfinite", "skip") not in NONFINITE_POLICIES:
        raise ConfigError(f"trainer.nonfinite={trainer['nonfinite']!r} is not one of {list(NONFINITE_POLICIES)}.")
    minutes = trainer.get("checkpoint_every_minutes")
    if minutes is not None and not (isinstance(minutes, (int, float)) and minutes > 0):
        raise ConfigError(f"trainer.checkpoint_every_minutes must be positive or null, got {minutes!r}.")
    if trainer.get("multihost", "auto") not in ("auto", True, False):
        raise ConfigError(f"trainer.multihost must be auto, true or false, got {trainer['multihost']!r}.")
    cache = trainer.get("compilation_cache")
    if cache is not None and not (isinstance(cache, str) and cache):
        raise ConfigError(f"trainer.compilation_cache must be a folder or null, got {cache!r}.")
    check_batch_sizes(trainer["batch_size"], eval_settings(trainer)[0], accumulate, devices, processes)


def check_config(cfg: DictConfig) -> Plan:
    """Everything the config alone decides, checked against the visible devices; raises ConfigError."""
    from ssm_lra.data.tasks import task_spec
    from ssm_lra.engine.optim import validate_optimizer_config
    from ssm_lra.model import build_model

    from ssm_lra.engine.xla_options import apply_xla_options

    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    # Before anything asks for a device: that starts the backend, which reads XLA's flags once.
    apply_xla_options(trainer, OmegaConf.to_container(cfg.model, resolve=True))

    import jax

    validate_trainer(trainer, jax.device_count(), jax.process_count())
    validate_optimizer_config(cfg.optimizer)
    check_known_keys("optimizer", dict(cfg.optimizer), CONF_DIR / "optimizer" / f"{cfg.optimizer.name}.yaml")
    check_known_keys("model", dict(cfg.model), CONF_DIR / "model" / f"{cfg.model.name}.yaml")
    task_cfg = resolved_task_config(cfg)
    spec = task_spec(task_cfg)
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), spec, trainer.get("precision", "float32"))
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    from ssm_lra.data.pipeline import check_in_memory_mode

    check_in_memory_mode(data_cfg.get("in_memory", "auto"))
    return Plan(cfg=cfg, task=task_cfg, data=data_cfg, trainer=trainer, spec=spec, model=model)


def enable_compilation_cache(folder: str | None) -> None:
    """Keep compiled steps in `folder` so that later runs of the same shapes load them instead of
    compiling again (minutes for Path-X models on a GPU). Must run before anything is compiled."""
    if folder is None:
        return
    import jax

    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create trainer.compilation_cache={path} ({e.strerror}); choose another folder or set it to null."
        ) from None
    jax.config.update("jax_compilation_cache_dir", str(path))


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
