"""`sam-eval` on a LiteMedSAM fine-tune gives the training run's last validation figures: the
released checkpoint (min-max pixels, TinyViT at 256 px) fine-tuned one step on a real nuclei
tile, scored on another from its Lightning checkpoint (validation settings read from the run)
and from its export (settings given)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import call_main, train_in_process
from lite_medsam_helpers import lite_medsam_path, stardist_nuclei
from PIL import Image
from test_eval_cli import last_validation

from sam_train.cli import eval as eval_cli
from sam_train.cli import prep as prep_cli

CLICKS = 3
MAX_MASKS = 6


def run(main, *args) -> None:
    """A tool's `main(ARGS)` in this process (the console scripts' own smoke tests start them
    as a user does), which must exit 0."""
    res = call_main(main, list(args))
    assert res.returncode in (0, None), res.stderr[-4000:]


@pytest.fixture(scope="module")
def nuclei_shards(tmp_path_factory):
    """One 128-px tile of stardist's nuclei for training (top-left) and one held out
    (bottom-right), as `sam-prep masks` shards."""
    root = tmp_path_factory.mktemp("nuclei")
    rgb, labels = stardist_nuclei()
    for split, (y, x) in (("train", (0, 0)), ("val", (384, 384))):
        for kind, arr in (("images", rgb), ("masks", labels.astype(np.uint8))):
            (root / split / kind).mkdir(parents=True)
            Image.fromarray(arr[y : y + 128, x : x + 128]).save(root / split / kind / "n.png")
        run(prep_cli.main, "masks", "--images", root / split / "images", "--masks",
            root / split / "masks", "--no-progress", root / "shards" / split)  # fmt: skip
    return root / "shards"


@pytest.mark.slow
def test_sam_eval_of_a_lite_medsam_fine_tune_gives_its_validation_figures(nuclei_shards, tmp_path):
    data = [
        "data=shards_sam",
        f"data.path={nuclei_shards / 'train'}",
        f"data.val_path={nuclei_shards / 'val'}",
        "data.num_workers=0",
    ]
    run_dir = tmp_path / "run"
    train_in_process(["stage=sam", "model=lite_medsam", f"model.init_from={lite_medsam_path()}",
        *data, "data.batch_size=1", "data.samples_per_epoch=1", "trainer.max_epochs=1",
        "model.freeze=[image_encoder,prompt_encoder]", "stage.module.max_masks_per_image=4",
        "stage.module.interactive.num_click_rounds=0", f"stage.module.val_max_masks={MAX_MASKS}",
        f"stage.module.val_max_clicks={CLICKS}", "logger=csv", "seed=3",
        "callbacks.progress_bar.refresh_rate=0"], run_dir)  # fmt: skip
    trained = last_validation(run_dir / "csv" / "metrics.csv")
    same = [k for k in trained if k.startswith("miou_")]
    assert {"miou_point_confident", "miou_box", f"miou_click_{CLICKS}"} <= set(same)
    assert trained["miou_box"] > 0.5  # a real model on real nuclei, not a blank

    given = [f"eval.val_max_masks={MAX_MASKS}", f"eval.val_max_clicks={CLICKS}", "seed=3"]
    for ckpt, settings in (
        (run_dir / "checkpoints" / "last.ckpt", []),  # the run's settings, read from it
        (run_dir / "export" / "sam.safetensors", given),  # an export carries no settings
    ):
        out = tmp_path / f"eval_{ckpt.suffix[1:]}"
        run(eval_cli.main, ckpt, *data, "eval.tasks=[point,box,clicks]", *settings,
            f"eval.out_dir={out}", f"hydra.run.dir={out}_hydra")  # fmt: skip
        figures = json.loads((out / "eval.json").read_text())["figures"]
        for name in same:
            assert figures[name] == pytest.approx(trained[name], abs=1e-5), (ckpt.name, name)
