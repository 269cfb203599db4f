"""`sam-train`: compose the config, build data, model and trainer, fit, report where results are.

Returns the optimised metric so Hydra sweepers (basic, Optuna) can use it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import sam_train.conf  # noqa: F401  (stores the code-default nodes the configs build on)
from sam_train.config_checks import check_config, check_stage_pairing, resolve_ckpt_path

log = logging.getLogger("sam_train")


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def apply_model_options(model: torch.nn.Module, cfg: DictConfig) -> None:
    """Activation checkpointing in every ViT, and torch.compile, when the config asks."""
    from sam_train.models.vit import VisionTransformer

    if cfg.get("activation_checkpointing"):
        for m in model.modules():
            if isinstance(m, VisionTransformer):
                m.grad_checkpointing = True
    if cfg.get("compile"):
        model.compile()


def group_choices() -> dict[str, str | None]:
    """The option picked in each config group (`{"model": "sam_vit_b", ...}`), when Hydra runs."""
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def train(cfg: DictConfig) -> float | None:
    check_stage_pairing(cfg, group_choices())
    check_config(cfg)
    run_dir = Path(cfg.paths.run_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir, cfg.get("auto_resume", False))
    print(f"[sam-train] stage {cfg.stage.name} | run folder: {run_dir.resolve()}", flush=True)
    if ckpt_path:
        print(f"[sam-train] resuming from {ckpt_path}", flush=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    apply_model_options(model, cfg)
    optim = instantiate(cfg.optim)
    # a partial, so the run config (full of _target_ keys) is passed as plain data
    make_module = instantiate(cfg.stage.module, _partial_=True)
    module = make_module(
        model=model, optim=optim, run_config=OmegaConf.to_container(cfg, resolve=True)
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=build_callbacks(cfg), logger=build_loggers(cfg) or False
    )
    if trainer.accelerator is not None and torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    metric_name = cfg.get("optimized_metric")
    before = None
    if cfg.get("validate_before_training") and not ckpt_path:
        before = trainer.validate(module, datamodule=datamodule, verbose=False)[0].get(metric_name)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

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


def report_results(run_dir: Path, metric_name: str | None, metric) -> None:
    """Print where the run left its files."""
    lines = [f"[sam-train] done. Results in {run_dir.resolve()}:"]
    for rel, what in [
        ("checkpoints", "Lightning checkpoints (last.ckpt + best)"),
        ("export", "exported weights (safetensors + metadata)"),
        ("csv/metrics.csv", "metrics"),
        ("reconstructions/final.png", "original | masked | reconstruction | pasted"),
        ("masks", "predicted masks"),
        (".hydra/config.yaml", "the composed config"),
    ]:
        if (run_dir / rel).exists():
            lines.append(f"  {rel:<28} {what}")
    if metric is not None:
        lines.append(f"  {metric_name} = {float(metric):.4f}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
