"""`sam-eval CHECKPOINT [overrides]`: validation's figures for any SAM checkpoint, plus a random
interior point, COCO mask AP of box prompts and segment-everything proposal recall; writes
eval.json, plots and a table. Runs on 1 CPU, 1 GPU or several (trainer=ddp)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from sam_train.errors import run_tool
from sam_train.evaluation.module import EvalError
from sam_train.evaluation.report import write_report
from sam_train.weights.checkpoints import file_sha256, read_weights

PROG = "sam-eval"

VALIDATION_KEYS = ("val_max_masks", "val_max_clicks", "min_mask_area", "max_mask_fraction", "seed")


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


def scored_data(cfg: DictConfig, choice: str | None) -> dict:
    """Which data is scored, for the console and eval.json."""
    if "SampleSam" in str(cfg.data.get("_target_")):
        return {
            "group": choice or "sam_sample",
            "val_path": None,
            "description": "the bundled sample's validation images (data=sam_sample: no data "
            "given; give data=shards_sam data.val_path=DIR to score yours)",
        }
    path = str(cfg.data.val_path)
    return {"group": choice, "val_path": path, "description": f"{path} (data={choice})"}


def mask_accounting(counts: dict[str, int], scored: int, settings: dict, skipped: dict) -> dict:
    """How many masks the data held, how many were scored, and why the others were not."""
    left_out = {k: v for k, v in counts.items() if k not in ("read", "kept") and v}
    capped = counts.get("kept", scored) - scored
    if capped > 0:
        left_out["over_val_max_masks"] = capped
    return {
        "read": counts.get("read", scored),
        "scored": scored,
        "left_out": left_out,
        "images_skipped": {k: v for k, v in skipped.items() if v},
        "settings": {k: settings.get(k) for k in ("min_mask_area", "max_mask_fraction")}
        | {"val_max_masks": settings.get("val_max_masks")},
    }


LEFT_OUT_HINTS = {
    "empty": "masks with no pixel",
    "below_min_mask_area": "eval.min_mask_area",
    "above_max_mask_fraction": "eval.max_mask_fraction",
    "over_max_masks": "data.max_masks per image",
    "over_val_max_masks": "eval.val_max_masks per image",
}


def describe_masks(masks: dict) -> str:
    """One line: read, scored, and each reason for leaving masks out with the key that sets it."""
    parts = [
        f"{n} {reason} ({LEFT_OUT_HINTS.get(reason, '')})"
        for reason, n in masks["left_out"].items()
    ]
    line = f"masks: {masks['read']} read, {masks['scored']} scored"
    if parts:
        line += "; left out: " + ", ".join(parts)
    if masks["images_skipped"]:
        skipped = ", ".join(f"{n} {k}" for k, n in masks["images_skipped"].items())
        line += f"; images skipped: {skipped}"
    return line


def evaluate(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from sam_train.evaluation.module import EvalModule
    from sam_train.predictor import load_sam

    ckpt = Path(cfg.ckpt)
    model = load_sam(ckpt)
    datamodule = build_datamodule(cfg, model.image_encoder.img_size, model.pixel_norm)
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    data = scored_data(cfg, choices.get("data"))
    print(f"[sam-eval] scoring {data['description']}", flush=True)
    from sam_train.cli.overrides import renamed_option_notices

    for line in renamed_option_notices(dict(choices)):
        print(f"[sam-eval] {line}", flush=True)
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
    per_mask, worst, counts = module.gathered()
    if not per_mask:
        raise EvalError(
            f"no masks to evaluate in {cfg.data.get('val_path') or cfg.data.get('path')}: the "
            "shards hold no annotations large enough (sam-prep coco / sa1b write masks)"
        )
    if not trainer.is_global_zero:
        return {}
    figures = {k.removeprefix("val/"): float(v) for k, v in metrics.items()}
    scored = len(per_mask["iou_point_confident"])
    data["masks"] = mask_accounting(counts, scored, settings, datamodule.skip_counter.as_dict())
    print(f"[sam-eval] {describe_masks(data['masks'])}", flush=True)
    return write_report(
        Path(cfg.eval.out_dir),
        figures,
        per_mask,
        worst,
        tasks=list(cfg.eval.tasks),
        config={**OmegaConf.to_container(cfg, resolve=True), "validation_settings": settings},
        checkpoint={"path": str(ckpt.resolve()), "sha256": file_sha256(ckpt)},
        data=data,
    )


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise EvalError("no checkpoint: sam-eval CHECKPOINT [overrides]")
    if not Path(cfg.ckpt).is_file():
        raise EvalError(f"checkpoint {cfg.ckpt} does not exist")
    return evaluate(cfg)


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    from sam_train.cli.run_folder import remove_if_unused

    def leave_no_run_folder() -> None:
        # nothing scored: no run folder left behind (Hydra made it before the run started)
        remove_if_unused(Path(cfg.paths.run_dir), Path(cfg.paths.output_dir))

    run_tool(PROG, evaluate_checkpoint, cfg, cleanup=leave_no_run_folder)


def check_checkpoint_argument(args: list[str]) -> None:
    """No checkpoint given, or one that does not exist: an `EvalError`."""
    given = [a.partition("=")[2] for a in args if a.startswith("ckpt=")]
    if not given:
        raise EvalError("no checkpoint: sam-eval CHECKPOINT [overrides] (see sam-eval --help)")
    if not Path(given[-1]).exists():
        raise EvalError(f"checkpoint {given[-1]} does not exist")


def help_text() -> str:
    """`sam-eval --help`: the checkpoint argument, the data to score, and every eval option
    with its comment (read from conf/eval.yaml, the one place they are defined)."""
    from sam_train.cli.help import CONF, HYDRA_STYLE_USAGE, config_groups

    lines = (CONF / "eval.yaml").read_text().splitlines()
    start = lines.index("eval:")
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1].strip()), len(lines))
    options = "\n".join(lines[start + 1 : end])
    groups = config_groups()
    stage2 = [  # the data options that read masks
        o
        for o in groups.get("data", [])
        if "SamDataModule" in (CONF / "data" / f"{o}.yaml").read_text()
        or "shards_sam@" in (CONF / "data" / f"{o}.yaml").read_text()
    ]
    usage = HYDRA_STYLE_USAGE.format(
        prog="sam-eval", first="CHECKPOINT ", key_example="eval.tasks=[point,box]"
    )
    return f"""{usage}

Score a SAM checkpoint on stage-2 shards: one-point, box and click mIoU, COCO mask AP of box
prompts, segment-everything recall; writes eval.json (which data, how many masks were read,
scored and left out, and why), plots and a table.

CHECKPOINT, the first argument: the checkpoint (ours, a sam-export file, an official SAM
.pth, a HF folder); ckpt=PATH works too.

data (default: the bundled sample's validation images, said so when used):
  data=shards_sam data.val_path=DIR    your shards (sam-prep ... --val-fraction F writes OUT/val)
  data options: {", ".join(stage2)} (coco: the old name of shards_sam)
trainer: {", ".join(o for o in groups.get("trainer", []) if not o.startswith("_"))}

eval options (eval.KEY=VALUE; null = the training run's setting):
{options}

examples:
  sam-eval run/export/sam.safetensors data=shards_sam data.val_path=shards/mine/val
  sam-eval sam_vit_b_01ec64.pth data=shards_sam data.val_path=VAL eval.tasks=[point,box] trainer=gpu
"""


def start(args: list[str]) -> None:
    """Answer --help, or check the overrides (before Hydra makes a run folder) and evaluate."""
    from sam_train.cli.help import wants_help

    if wants_help(args):
        print(help_text())
        return
    if args and "=" not in args[0] and not args[0].startswith("-"):
        args = [f"ckpt={args[0]}", *args[1:]]
    if not any(a.startswith("-") for a in args):
        from sam_train.cli.overrides import check_overrides

        check_overrides(args, "eval")
        check_checkpoint_argument(args)
    sys.argv = [sys.argv[0], *args]
    _hydra_main()


def main(argv: list[str] | None = None) -> None:
    """The first argument without '=' is the checkpoint (`ckpt=` works too)."""
    run_tool(PROG, start, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
