"""Checks on a composed run config that Hydra's own struct mode cannot make.

They run before anything is built, so a wrong combination fails in a second with a message
that names the key and the fix, not after data loading or model construction.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


class ConfigError(ValueError):
    """A run config that cannot work; the message names the key and the fix."""


def check_config(cfg: DictConfig) -> None:
    problems: list[str] = []
    trainer = cfg.trainer
    precision = str(trainer.get("precision", "32-true"))
    if trainer.get("accelerator") == "cpu" and ("bf16" in precision or precision.startswith("16")):
        problems.append(
            f"trainer.precision={precision} on a CPU: half-precision matmuls run ~100x slower "
            "on CPUs without bf16 hardware; use trainer.precision=32-true, or trainer=gpu"
        )
    stage = cfg.stage.name
    target = str(cfg.model.get("_target_", ""))
    expected = {
        "mae": "MaskedAutoencoder",
        "sam": "sam",
        "sami": "sami_student",
        "distill": "distill_student",
    }.get(stage)
    if expected and expected not in target:
        problems.append(
            f"stage={stage} with model target {target!r}: pick a model of that stage "
            f"(model=mae_vit_* for stage=mae, model=sam_vit_* for stage=sam)"
        )
    if stage in ("sami", "distill"):
        from sam_train.lit.teacher_models import teacher_problems

        problems += teacher_problems(cfg)
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "last") and not Path(str(ckpt)).is_file():
        problems.append(f"ckpt_path={ckpt} does not exist; give a Lightning .ckpt file or 'last'")
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


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
