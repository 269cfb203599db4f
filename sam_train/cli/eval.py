"""`sam-eval CKPT [overrides]`: validation's figures for any SAM checkpoint, plus a random
interior point, COCO mask AP of box prompts and segment-everything proposal recall; writes
eval.json, plots and a table. Runs on 1 CPU, 1 GPU or several (trainer=ddp)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from sam_train.evaluation.report import write_report
from sam_train.weights.checkpoints import WeightsError, file_sha256, read_weights

VALIDATION_KEYS = ("val_max_masks", "val_max_clicks", "min_mask_area", "max_mask_fraction", "seed")


class EvalError(ValueError):
    """Input `sam-eval` cannot use; the message names it and the fix."""


def validation_settings(cfg: DictConfig, ckpt: Path) -> dict:
    """The eval config's validation settings, nulls filled from the checkpoint's training run."""
    trained = (read_weights(ckpt).metadata.get("config") or {}).get("stage", {}).get("module", {})
    out = {}
    for key in VALIDATION_KEYS:
        value = cfg.seed if key == "seed" and "seed" not in trained else cfg.eval.get(key)
        if value is None:
            value = trained.get(key)
        if value is not None:
            out[key] = value
    return out


def build_datamodule(
    cfg: DictConfig, image_size: int, pixel_norm: str = "imagenet"
) -> L.LightningDataModule:
    data = cfg.data
    with open_dict(data):
        if data.get("img_size") is None:
            data.img_size = image_size
        data.pixel_norm = pixel_norm  # the checkpoint's preprocessing, whatever the data says
        if "SampleSam" not in str(data.get("_target_")):
            if data.get("val_path") is None:
                raise EvalError("no data.val_path: give the shards to evaluate, data.val_path=DIR")
            if OmegaConf.is_missing(data, "path"):
                data.path = data.val_path  # only the validation loader is read
            from sam_train.data.shards import resolve_shards

            try:
                resolve_shards(data.val_path)
            except FileNotFoundError as err:
                raise EvalError(str(err)) from err
    return instantiate(data)


def evaluate(cfg: DictConfig) -> dict:
    from sam_train.evaluation.module import EvalModule
    from sam_train.predictor import load_sam

    ckpt = Path(cfg.ckpt)
    model = load_sam(ckpt)
    datamodule = build_datamodule(cfg, model.image_encoder.img_size, model.pixel_norm)
    settings = validation_settings(cfg, ckpt)
    module = EvalModule(
        model,
        tasks=list(cfg.eval.tasks),
        everything=OmegaConf.to_container(cfg.eval.everything),
        num_worst=cfg.eval.num_worst,
        coco_eval=cfg.eval.coco_eval,
        **settings,
    )
    L.seed_everything(cfg.seed, verbose=False)
    trainer: L.Trainer = instantiate(cfg.trainer)
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    per_mask, worst = module.gathered()
    if not per_mask:
        raise EvalError(
            f"no masks to evaluate in {cfg.data.get('val_path') or cfg.data.get('path')}: the "
            "shards hold no annotations large enough (sam-prep coco / sa1b write masks)"
        )
    if not trainer.is_global_zero:
        return {}
    figures = {k.removeprefix("val/"): float(v) for k, v in metrics.items()}
    return write_report(
        Path(cfg.eval.out_dir),
        figures,
        per_mask,
        worst,
        tasks=list(cfg.eval.tasks),
        config={**OmegaConf.to_container(cfg, resolve=True), "validation_settings": settings},
        checkpoint={"path": str(ckpt.resolve()), "sha256": file_sha256(ckpt)},
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        if OmegaConf.is_missing(cfg, "ckpt"):
            raise EvalError("no checkpoint: sam-eval CKPT [overrides]")
        if not Path(cfg.ckpt).is_file():
            raise EvalError(f"checkpoint {cfg.ckpt} does not exist")
        evaluate(cfg)
    except (EvalError, WeightsError, ValueError) as err:
        print(f"sam-eval: error: {err}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """The first argument without '=' is the checkpoint (`ckpt=` works too)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and "=" not in args[0] and not args[0].startswith("-"):
        args[0] = f"ckpt={args[0]}"
    sys.argv = [sys.argv[0], *args]
    _hydra_main()


if __name__ == "__main__":
    main()
