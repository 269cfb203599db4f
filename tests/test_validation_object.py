"""`SamValidation`, the one validation that training's `SamModule` and sam-eval's `EvalModule`
hold: per-source and overall figures weigh every mask once, a rank reduction adds sums and
counts before dividing, and both holders score a batch to the same figures."""

from __future__ import annotations

import pytest
import torch
from amg_helpers import SCENE_HW, scene_batch, shapes_scene
from conftest import tiny_sam

from sam_train.evaluation.module import EvalModule
from sam_train.evaluation.validation import SamValidation
from sam_train.lit.optim import OptimConfig
from sam_train.lit.sam_module import SamModule


@pytest.fixture(scope="module")
def scored():
    """A tiny SAM and two batches of shapes scenes, with their embeddings."""
    sam = tiny_sam(48, seed=0, image_size=64, patch_size=8, window_size=4).eval()
    batches = [scene_batch([shapes_scene(*SCENE_HW, s)]) for s in (3, 4)]
    with torch.no_grad():
        embeddings = [sam.embed_images(b.images) for b in batches]
    return sam, batches, embeddings


def run_epoch(validation: SamValidation, sam, batches, embeddings, sources=(0, 0), reduce=None):
    validation.start_epoch(["a", "b"] if sources != (0, 0) else [])
    per_mask = []
    with torch.no_grad():
        for i, (batch, emb) in enumerate(zip(batches, embeddings)):
            targets = validation.select(batch, i)
            per_mask.append(validation.score(sam, batch, targets, emb, sources[i]))
    return validation.compute(reduce), per_mask


def test_sources_and_overall_weigh_every_mask_once(scored):
    sam, batches, embeddings = scored
    validation = SamValidation(max_masks=3, max_clicks=2, min_mask_area=1, coco_eval=False)
    (by_source, overall), per_mask = run_epoch(validation, sam, batches, embeddings, (0, 1))
    box = [r["iou_box"] for r in per_mask]
    assert by_source["a/miou_box"] == pytest.approx(float(box[0].mean()))
    assert by_source["b/miou_box"] == pytest.approx(float(box[1].mean()))
    assert overall["miou_box"] == pytest.approx(float(torch.cat(box).mean()))
    assert {"miou_point_oracle", "miou_point_confident", "miou_click_2", "noc90"} <= set(overall)


def test_a_rank_reduction_adds_sums_and_counts_before_dividing(scored):
    sam, batches, embeddings = scored
    single, _ = run_epoch(SamValidation(3, 2, 1, coco_eval=False), sam, batches, embeddings)
    twice, _ = run_epoch(
        SamValidation(3, 2, 1, coco_eval=False), sam, batches, embeddings, reduce=lambda t: 2 * t
    )  # two ranks that saw the same masks: the same means
    assert twice[1] == pytest.approx(single[1])


def test_training_and_sam_eval_score_a_batch_alike(scored):
    """The training module and sam-eval's module run the same validation step on a batch."""
    sam, batches, _ = scored
    settings = dict(val_max_masks=3, val_max_clicks=2, min_mask_area=1, seed=5, coco_eval=False)
    training = SamModule(sam, OptimConfig(), **settings)
    evaluation = EvalModule(sam, tasks=["point", "box", "clicks"], num_worst=2, **settings)
    assert not isinstance(evaluation, SamModule)
    figures = []
    for module in (training, evaluation):
        module.validation.start_epoch([])
        with torch.no_grad():
            for i, batch in enumerate(batches):
                module.validation_step(batch, i)
        figures.append(module.validation.compute()[1])
    shared = set(figures[0])
    assert shared < set(figures[1])  # sam-eval adds its random point
    assert {"miou_random_point_oracle", "miou_random_point_confident"} <= set(figures[1])
    assert {k: figures[1][k] for k in shared} == figures[0]
