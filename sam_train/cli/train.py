"""`sam-train`: compose the config, build data, model and trainer, fit, report where results are.

Returns the optimised metric so Hydra sweepers (basic, Optuna) can use it. Lightning and torch
are imported only once a run starts, so `sam-train --help` and config errors answer at once.
A mistake of the user's (a bad option, a wrong or damaged checkpoint, a missing file) ends in
one `sam-train: error: ...` line and exit code 2; SAM_TRAIN_TRACEBACK=1 shows the traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

import sam_train.conf  # noqa: F401  (stores the code-default nodes the configs build on)
from sam_train.cli.run_folder import keep_first_record, remove_if_unused, resume_overrides
from sam_train.config_checks import (
    ConfigError,
    check_config,
    check_data_paths,
    check_resume_checkpoint,
    check_resume_fits,
    check_stage_pairing,
    resolve_ckpt_path,
    resume_changes,
)
from sam_train.errors import run_tool

if TYPE_CHECKING:
    import lightning as L
    import torch

PROG = "sam-train"


def build_callbacks(cfg: DictConfig, has_logger: bool = True) -> list[L.Callback]:
    """The configured callbacks; without a logger (logger=none) those that only log (the
    learning-rate and throughput monitors, which Lightning refuses then) are left out."""
    from hydra.utils import instantiate

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if has_logger:
        return callbacks
    from lightning.pytorch.callbacks import LearningRateMonitor, ThroughputMonitor

    return [c for c in callbacks if not isinstance(c, LearningRateMonitor | ThroughputMonitor)]


def build_loggers(cfg: DictConfig) -> list:
    from hydra.utils import instantiate

    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def apply_model_options(model: torch.nn.Module, cfg: DictConfig) -> None:
    """Activation checkpointing in every ViT (of every block, or of every n-th), and
    torch.compile, when the config asks."""
    from sam_train.models.vit import VisionTransformer

    every = cfg.get("activation_checkpointing")
    if every:
        for m in model.modules():
            if isinstance(m, VisionTransformer):
                m.grad_checkpointing = every
    if cfg.get("compile"):
        model.compile()


def group_choices() -> dict[str, str | None]:
    """The option picked in each config group (`{"model": "sam_vit_b", ...}`), when Hydra runs."""
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def instantiate_checked(node: Any, key: str, **kwargs: Any) -> Any:
    """`instantiate`, with a constructor's refusal of its arguments (ValueError, TypeError, a
    missing or unusable file) reported as the config error it is."""
    from hydra.utils import instantiate

    from sam_train.config_types import argument_type_problems

    problems = argument_type_problems(node, key)
    if problems:
        raise ConfigError("; ".join(problems))
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = root_cause(err)
        if isinstance(cause, ValueError | TypeError | FileNotFoundError):
            raise ConfigError(f"{key}: {cause}") from err
        raise


def forget_logged_after(trainer, ckpt_path: str) -> None:
    """metrics.csv keeps the steps before the checkpoint a run resumes from, once: the rows
    its first part logged after that checkpoint are logged again by this part."""
    from sam_train.lit.loggers import ResumableCSVLogger
    from sam_train.weights.checkpoints import read_checkpoint_object

    step = int(read_checkpoint_object(ckpt_path).get("global_step", 0))
    for logger in trainer.loggers:
        if isinstance(logger, ResumableCSVLogger) and trainer.is_global_zero:
            logger.forget_from_step(step)


def train(cfg: DictConfig) -> float | None:
    check_stage_pairing(cfg, group_choices())
    check_config(cfg)
    check_data_paths(cfg)
    run_dir = Path(cfg.paths.run_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir, cfg.get("auto_resume", False))
    if ckpt_path:
        check_resume_checkpoint(ckpt_path, cfg.stage.name)
    print(f"[sam-train] stage {cfg.stage.name} | run folder: {run_dir.resolve()}", flush=True)
    from sam_train.cli.overrides import renamed_option_notices

    for line in renamed_option_notices(group_choices()):
        print(f"[sam-train] {line}", flush=True)
    if ckpt_path:
        print(f"[sam-train] resuming from {ckpt_path}", flush=True)
        changed = resume_changes(ckpt_path, cfg)
        if changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            print(
                f"[sam-train] warning: this resume changes {', '.join(changed[:3])}{more}: it "
                "will not continue the run as started (its options: .hydra/config.yaml)",
                flush=True,
            )

    from sam_train.cli import quiet

    quiet.configure_lightning_output()
    import lightning as L
    import torch

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate_checked(cfg.data, "data")
    notice = no_validation_notice(datamodule, cfg.get("optimized_metric"))
    if notice:
        print(f"[sam-train] {notice}", flush=True)
    model = instantiate_checked(cfg.model, "model")
    if ckpt_path:
        check_resume_fits(ckpt_path, model)
    apply_model_options(model, cfg)
    optim = instantiate_checked(cfg.optim, "optim")
    # a partial, so the run config (full of _target_ keys) is passed as plain data
    make_module = instantiate_checked(cfg.stage.module, "stage.module", _partial_=True)
    module = make_module(
        model=model, optim=optim, run_config=OmegaConf.to_container(cfg, resolve=True)
    )
    loggers = build_loggers(cfg)
    trainer: L.Trainer = instantiate_checked(
        cfg.trainer,
        "trainer",
        callbacks=build_callbacks(cfg, bool(loggers)),
        logger=loggers or False,
    )
    if ckpt_path:
        forget_logged_after(trainer, ckpt_path)
    if trainer.accelerator is not None and torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    metric_name = cfg.get("optimized_metric")
    before = None
    if cfg.get("validate_before_training") and not ckpt_path:
        before = trainer.validate(module, datamodule=datamodule, verbose=False)[0].get(metric_name)
    # weights_only: check_resume_checkpoint has loaded the file the same way
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    if module.derived is not None:
        print(f"[sam-train] {module.derived.describe()}", flush=True)
    metric = trainer.callback_metrics.get(metric_name)
    if before is not None and metric is not None and trainer.is_global_zero:
        print(
            f"[sam-train] {metric_name}: {float(before):.4f} before training -> "
            f"{float(metric):.4f} after",
            flush=True,
        )
    if trainer.is_global_zero:
        report_results(run_dir, metric_name, metric)
    return float(metric) if metric is not None else None


def no_validation_notice(datamodule: Any, metric_name: str | None) -> str | None:
    """One line when the data has no validation set (the run goes on without one)."""
    if getattr(datamodule, "val_path", True) and getattr(datamodule, "val_set", True):
        return None
    fix = "data.val_fraction" if hasattr(datamodule, "val_set") else "data.val_path=VAL_SHARDS"
    return (
        f"no validation data: training runs without val/* metrics ({metric_name} is never "
        f"computed, no best checkpoint is kept); give {fix} (sam-prep --val-fraction 0.1 "
        "writes OUT/val)"
    )


def describe_checkpoints(folder: Path, metric_name: str | None) -> str:
    """What the checkpoints folder really holds: last.ckpt, and the best one if there is one."""
    best = sorted(p.name for p in folder.glob("*.ckpt") if p.name != "last.ckpt")
    parts = ["last.ckpt"] if (folder / "last.ckpt").is_file() else []
    if best:
        parts.append(f"best by {metric_name}: {', '.join(best)}")
    else:
        parts.append(f"no best: {metric_name} was never computed")
    return "Lightning checkpoints (" + "; ".join(parts) + ")"


def report_results(run_dir: Path, metric_name: str | None, metric) -> None:
    """Print where the run left its files."""
    lines = [f"[sam-train] done. Results in {run_dir.resolve()}:"]
    for rel, what in [
        ("checkpoints", describe_checkpoints(run_dir / "checkpoints", metric_name)),
        ("export", "exported weights (safetensors + metadata)"),
        ("csv/metrics.csv", "metrics"),
        ("tensorboard", "TensorBoard events (tensorboard --logdir <this folder>)"),
        ("reconstructions/final.png", "original | masked | reconstruction | pasted"),
        ("masks", "predicted masks"),
        (".hydra/config.yaml", "the composed config"),
    ]:
        if (run_dir / rel).exists():
            lines.append(f"  {rel:<28} {what}")
    if metric is not None:
        lines.append(f"  {metric_name} = {float(metric):.4f}")
    print("\n".join(lines), flush=True)


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain (Hydra's instantiate wraps the constructor's)."""
    seen = set()
    while err.__cause__ is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__
    return err


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def run(cfg: DictConfig) -> float | None:
    run_dir, output_dir = Path(cfg.paths.run_dir), Path(cfg.paths.output_dir)

    def leave_no_empty_run_folder() -> str | None:
        if remove_if_unused(run_dir, output_dir):
            return None
        return f"(run folder: {run_dir.resolve()})"

    return run_tool(PROG, train, cfg, cleanup=leave_no_empty_run_folder)


def start(args: list[str]) -> None:
    """Check the overrides (before Hydra makes a run folder), answer --help, or run."""
    from sam_train.cli import help as cli_help
    from sam_train.cli.overrides import check_overrides

    if cli_help.wants_help(args):
        overrides = [a for a in args if not a.startswith("-")]
        print(cli_help.help_text(check_overrides(overrides, check_data=False)))
        return
    if not any(a.startswith("-") for a in args):  # a plain run (not multirun, --cfg, ...)
        check_overrides(args)
    sys.argv[1:] = keep_first_record(resume_overrides(args))
    run()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a checkpoint given to resume sends the run to that run's folder."""
    run_tool(PROG, start, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
