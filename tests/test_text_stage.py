"""`sam-train stage=sam prompt.text.enabled=true` end to end, on two DDP processes (CPU/gloo):
no step leaves a parameter without a gradient (find_unused_parameters stays false), metrics are
summed over ranks, text and COCO metrics are logged."""

from __future__ import annotations

import pytest
from conftest import SAM_TINY, run_cli
from text_helpers import tiny_clip_files


@pytest.mark.slow
def test_two_process_ddp_trains_text_prompts_with_checkpointed_rounds_and_logs_metrics(
    tmp_path,
) -> None:
    cfg_path, ckpt = tiny_clip_files(tmp_path / "clip")
    run = tmp_path / "run"
    args = [
        "stage=sam",
        *SAM_TINY,
        "prompt.text.enabled=true",
        "model.text_embed_dim=24",
        f"prompt.text.clip={cfg_path}",
        f"prompt.text.pretrained={ckpt}",
        "prompt.text.min_region_area=30",
        "prompt.text.prob=1.0",
        "prompt.text.category_ratio=0.5",
        "stage.module.interactive.checkpoint_rounds=true",  # recomputed rounds under DDP
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "data.samples_per_epoch=8",
        "data.num_workers=0",
        f"hydra.run.dir={run}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    res = run_cli("sam-train", *args, cwd=tmp_path, timeout=900)  # DDP: a process of its own
    assert res.returncode == 0, res.stderr[-4000:]
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    for name in [
        "val/miou_text",
        "val/miou_text_wrong",
        "val/miou_region",
        "val/miou_whole_image",
        "val/coco_mask_ap",
        "val/coco_mask_ap50",
        "val/miou_box",
        "train/text_prompt_share",
    ]:
        assert name in header, name
    assert (run / "masks" / "text_final.png").is_file()
