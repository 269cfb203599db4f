"""Checks on a composed run config that Hydra's own struct mode cannot make.

They run before anything is built, so a wrong combination fails in a second with a message
that names the key and the fix, not after data loading or model construction.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.utils import get_object
from omegaconf import DictConfig

from sam_train import cpu_precision
from sam_train.errors import UserError, exit_with_error, one_line


class ConfigError(UserError):
    """A run config that cannot work; the message names the key and the fix."""


def check_config(cfg: DictConfig) -> None:
    problems: list[str] = []
    trainer = cfg.trainer
    if trainer.get("accelerator") == "cpu":
        precision = str(trainer.get("precision", "32-true"))
        problem = cpu_precision.cpu_precision_problem(precision, cpu_precision.cpu_bf16_units())
        if problem:
            problems.append(problem)
    every = cfg.get("activation_checkpointing", False)
    if not isinstance(every, bool) and not (isinstance(every, int) and every >= 1):
        problems.append(
            f"activation_checkpointing={every}: give true (every encoder block), false, "
            "or n >= 1 (every n-th block)"
        )
    stage = cfg.stage.name
    if cfg.get("peft") is not None and stage != "sam":
        problems.append(
            f"peft=lora with stage={stage}: adapters are for stage=sam; drop peft=lora "
            "(stage=mae trains the whole encoder)"
        )
    if stage in ("sami", "distill"):
        from sam_train.lit.teacher_models import teacher_problems

        problems += teacher_problems(cfg)
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "last") and not Path(str(ckpt)).is_file():
        problems.append(f"ckpt_path={ckpt} does not exist; give a Lightning .ckpt file or 'last'")
    if problems:
        raise ConfigError("; ".join(problems))


def check_resume_checkpoint(ckpt_path: str, stage: str) -> None:
    """The checkpoint a run resumes from must be a readable sam-train Lightning checkpoint of
    the run's own stage (read safely here, before Lightning unpickles it)."""
    from sam_train.weights.checkpoints import WeightsError, lightning_checkpoint_stage

    try:
        found = lightning_checkpoint_stage(ckpt_path)
    except WeightsError as err:
        raise ConfigError(f"ckpt_path: {err}") from err
    if found is None:
        raise ConfigError(
            f"ckpt_path={ckpt_path} is not a sam-train Lightning checkpoint (ckpt_path resumes "
            "a run from its checkpoints/*.ckpt); to start from these weights use model.init_from"
        )
    if found != stage:
        from sam_train.lit.base import registered_stages

        level = registered_stages()[found].level
        fix = (
            f"resume it with stage={found}, or start stage 2 from its encoder with "
            f"stage=sam model.init_from={ckpt_path}"
            if level == 1
            else f"resume it with stage={found}"
        )
        raise ConfigError(
            f"ckpt_path={ckpt_path} is a stage-{level} ({found}) checkpoint and this run is "
            f"stage={stage}: {fix}"
        )


def check_resume_fits(ckpt_path: str, model) -> None:
    """The model a run resumes must have the checkpoint's tensors (names and shapes): a run
    resumed with other model options would fail inside Lightning with every key listed."""
    from sam_train.weights.checkpoints import read_checkpoint_object

    saved = {
        k.removeprefix("model."): tuple(v.shape)
        for k, v in read_checkpoint_object(ckpt_path)["state_dict"].items()
        if k.startswith("model.")
    }
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    differ = sorted(k for k in saved.keys() & wanted.keys() if saved[k] != wanted[k])
    missing, extra = sorted(wanted.keys() - saved.keys()), sorted(saved.keys() - wanted.keys())
    if differ or missing or extra:
        example = (
            f"{differ[0]} is {saved[differ[0]]} there, {wanted[differ[0]]} here"
            if differ
            else f"{(missing or extra)[0]} is {'missing' if missing else 'extra'} there"
        )
        raise ConfigError(
            f"ckpt_path={ckpt_path} was written by a model with other options "
            f"({len(differ)} shapes differ, {len(missing)} tensors missing, {len(extra)} extra; "
            f"e.g. {example}): resume with the model options of the run that wrote it "
            "(its .hydra/config.yaml)"
        )


# what a run is: a resume that changes these does not continue the run it resumes
RUN_DEFINING = ("stage", "model", "data", "seed")
NOT_DEFINING = {"data.pin_memory"}  # how batches reach the device, not which


def resume_changes(ckpt_path: str, cfg: DictConfig) -> list[str]:
    """`key (then -> now)` for each model, data, stage or seed option whose value differs from
    the one the checkpoint's run was started with (its stored config); empty for a checkpoint
    without one."""
    from omegaconf import OmegaConf

    from sam_train.weights.checkpoints import read_checkpoint_object

    started = (read_checkpoint_object(ckpt_path).get("sam_train") or {}).get("config")
    if not started:
        return []
    resolved = OmegaConf.to_container(cfg, resolve=True)
    then = flat_options({k: started.get(k) for k in RUN_DEFINING})
    now = flat_options({k: resolved.get(k) for k in RUN_DEFINING})
    return [
        f"{key} ({then.get(key)!r} -> {now.get(key)!r})"
        for key in sorted(then.keys() | now.keys())
        if then.get(key) != now.get(key) and key not in NOT_DEFINING
    ]


def flat_options(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """{"data.batch_size": 4, ...}: every leaf of a nested config by its dotted key."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flat_options(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolve_ckpt_path(
    ckpt_path: str | None, run_dir: Path, auto_resume: bool = False
) -> str | None:
    """'last' means <run_dir>/checkpoints/last.ckpt, which must exist; with `auto_resume` and
    no path, that file is used when it exists."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if ckpt_path is None and auto_resume and last.is_file():
        return str(last)
    if ckpt_path != "last":
        return ckpt_path
    if not last.is_file():
        raise ConfigError(
            f"ckpt_path=last but {last} does not exist; resume needs the same run folder "
            "(hydra.run.dir=<old run folder>) or an explicit ckpt_path=<file>"
        )
    return str(last)


# ------------------------------------------------------------------ data paths
def _value(cfg: DictConfig, key: str):
    """The resolved value at `key`, or None when it is absent, missing or cannot be resolved
    here (an interpolation only Hydra's running job knows)."""
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
    except Exception:
        return None
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def data_path_problems(cfg: DictConfig, need_path: bool = True) -> list[str]:
    """Data paths that cannot be read: a shard path (data.path, data.val_path) that does not
    exist or holds no shards, an image folder (data.root) that does not exist. URL and pipe:
    specs are left to the reader. Runs before anything is written, so a typo in a path never
    leaves a run folder (nor falls back to other data). need_path: data.path must be given
    (training; sam-eval reads only data.val_path)."""
    if "data" not in cfg:
        return []
    problems = []
    from omegaconf import OmegaConf

    if need_path and "path" in cfg.data.keys() and OmegaConf.is_missing(cfg.data, "path"):
        problems.append(
            "data.path is required: give the shard folder to train on, data.path=SHARDS "
            "(made by sam-prep)"
        )
    for key in ("path", "val_path"):
        spec = _value(cfg, f"data.{key}")
        if spec is None or spec == "???":
            continue
        from sam_train.data.shards import resolve_shards

        try:
            resolve_shards(spec)
        except FileNotFoundError as err:
            problems.append(f"data.{key}: {err}")
            continue
        if "SamDataModule" in str(cfg.data.get("_target_", "")):
            problems += _maskless_shards(key, spec)
    root = _value(cfg, "data.root")
    if isinstance(root, str) and not Path(root).expanduser().is_dir():
        problems.append(
            f"data.root={root} does not exist or is not a folder; give your image folder"
        )
    return problems


def _maskless_shards(key: str, spec) -> list[str]:
    """Stage-2 data given shards that hold no masks (`sam-prep images` writes stage-1 ones)."""
    from sam_train.data.shards import read_manifest

    specs = spec if isinstance(spec, list) else [spec]
    for one in specs:
        path = Path(str(one)).expanduser()
        manifest = read_manifest(path) if path.exists() else None
        if manifest and (manifest.get("args") or {}).get("kind") == "images":
            return [
                f"data.{key}={one} holds image-only shards (sam-prep images, for stage 1); "
                "stage 2 needs masks: sam-prep masks | coco | sa1b | labelme"
            ]
    return []


def check_data_paths(cfg: DictConfig) -> None:
    problems = data_path_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


# ------------------------------------------------------------------ stage pairings
CONF_DIR = Path(__file__).parent / "conf"
_STAGE_OVERRIDE = re.compile(r"^\s*-\s*override\s+/stage:\s*(\w+)", re.MULTILINE)
_SAME_GROUP_BASE = re.compile(r"^\s*-\s*(\w+)\s*$", re.MULTILINE)


def built_type(target: str) -> type | None:
    """The class a `_target_` builds: the class itself, or a function's return annotation."""
    try:
        obj = get_object(target)
    except Exception:  # an unknown target is instantiate's error to report
        return None
    if isinstance(obj, type):
        return obj
    made = typing.get_type_hints(obj).get("return") if callable(obj) else None
    return made if isinstance(made, type) else None


def stage_of_option(group: str, option: str) -> str | None:
    """The stage an experiment or search is written for: the `override /stage:` it makes, or
    that of the option of its own group it builds on (`- sam_vit_b_sa1b`)."""
    path = CONF_DIR / group / f"{option}.yaml"
    text = path.read_text() if path.is_file() else ""
    found = _STAGE_OVERRIDE.findall(text)
    if found:
        return found[0]
    for base in _SAME_GROUP_BASE.findall(text):
        if base != option and (stage := stage_of_option(group, base)):
            return stage
    return None


def check_stage_pairing(cfg: DictConfig, choices: Mapping[str, str | None] | None = None) -> None:
    """Refuse a model, data, experiment or search of the other stage before anything is built.

    choices: the option picked in each config group (Hydra's runtime choices); the message
    names them (`stage=sam model=mae_vit_tiny`), or the `_target_`s when they are not known.
    A model fits when it builds what the stage module's `model` argument is annotated with; a
    data module when its `feeds_stage` is the stage; an experiment or search when the stage
    it selects (`override /stage: ...`) is the stage.
    """
    choices = dict(choices or {})
    stage = str(choices.get("stage") or cfg.stage.name)
    problems = []

    def named(group: str) -> str:
        option = choices.get(group)
        return f"{group}={option}" if option else f"{group}._target_={cfg[group]._target_}"

    module = built_type(str(cfg.stage.module._target_))
    wanted = typing.get_type_hints(module.__init__).get("model") if module else None
    model = built_type(str(cfg.model.get("_target_", "")))
    if isinstance(wanted, type) and model is not None and not issubclass(model, wanted):
        problems.append(
            f"stage={stage} with {named('model')}: that model builds a {model.__name__}, "
            f"stage={stage} trains a {wanted.__name__}; pick a model of stage {stage} "
            f"(model={stage}_vit_*) or the stage of that model"
        )
    data = built_type(str(cfg.data.get("_target_", "")))
    feeds = getattr(data, "feeds_stage", None)
    takes = getattr(module, "batch_stage", stage)  # stages built on mae / sam take their batches
    if feeds is not None and feeds != takes:
        problems.append(
            f"stage={stage} with {named('data')}: that data feeds stage={feeds}; pick a data "
            f"config of stage {stage}, or stage={feeds}"
        )
    for group in ("experiment", "hparams_search"):
        option = choices.get(group)
        needs = stage_of_option(group, option) if option else None
        if needs is not None and needs != stage:
            problems.append(
                f"stage={stage} with {group}={option}: that {group} is written for "
                f"stage={needs}; drop stage={stage} (it selects stage={needs} itself)"
            )
    if problems:
        raise ConfigError("; ".join(problems))


class StagePairingCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): the pairing and data path checks on the
    composed config before a run or a sweep starts, so a search of the other stage is refused before its
    first trial is composed. Hydra turns a callback's exceptions into warnings, so a refusal
    is printed and exits with status 2."""

    def _check(self, config: DictConfig) -> None:
        try:
            check_stage_pairing(config, config.hydra.runtime.choices)
            check_data_paths(config)
        except ConfigError as err:
            exit_with_error("sam-train", one_line(str(err)))

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)
