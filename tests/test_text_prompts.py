"""Text prompts: the prompt token, the first-prompt mix, training through SamModule,
precomputed region embeddings, the predictor's phrase convenience."""

from __future__ import annotations

import copy

import lightning as L
import numpy as np
import pytest
import torch
from amg_helpers import shapes_on_noise
from conftest import call_main, cpu_trainer, tiny_sam
from text_helpers import read_all_batches, tiny_clip_files
from torch.utils.data import DataLoader

from sam_train.cli import prep as prep_cli
from sam_train.lit.optim import OptimConfig
from sam_train.lit.sam_module import SamModule
from sam_train.lit.text_pictures import text_prompt_rows
from sam_train.predictor import SamPredictor
from sam_train.training import InteractiveConfig, select_masks
from sam_train.training.prompts import PAD, TEXT, first_prompts
from sam_train.training.text_prompts import TextPromptConfig, TextPrompts

E = 24  # the tiny CLIP's embedding width


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    return tiny_clip_files(tmp_path_factory.mktemp("clip"))


def text_cfg(clip_files, **kw) -> TextPromptConfig:
    cfg, ckpt = clip_files
    return TextPromptConfig(enabled=True, clip=cfg, pretrained=ckpt, min_region_area=50, **kw)


def _perturbed(sam):
    for p in sam.parameters():  # non-trivial weights everywhere
        p.data.add_(torch.randn_like(p) * 0.05)
    return sam.eval()


def test_text_token_changes_the_mask_and_mixes_with_points_and_without_text() -> None:
    sam = _perturbed(tiny_sam(text_embed_dim=E))
    emb = sam.embed_images(torch.randn(1, 3, 64, 64))
    text = torch.nn.functional.normalize(torch.randn(2, 1, E), dim=-1)
    pts = (torch.tensor([[[20.0, 30.0]]]).expand(2, 1, 2), torch.ones(2, 1, dtype=torch.long))
    with torch.no_grad():
        a, _ = sam.decode(emb, text_embeds=text, multimask_output=False)
        assert (a[0] - a[1]).abs().max() > 1e-3  # a different phrase, a different mask
        with_point, _ = sam.decode(emb, points=pts, text_embeds=text, multimask_output=False)
        point_only, _ = sam.decode(emb, points=pts, multimask_output=False)
        assert (with_point[0] - point_only[0]).abs().max() > 1e-3
        # one batch, with and without text: each row as if decoded alone
        valid = torch.tensor([True, False])
        mixed, _ = sam.decode(emb, points=pts, text_embeds=text, text_valid=valid)
        for i in range(2):
            alone, _ = sam.decode(
                emb,
                points=(pts[0][i : i + 1], pts[1][i : i + 1]),
                text_embeds=text[i : i + 1],
                text_valid=valid[i : i + 1],
            )
            assert torch.allclose(mixed[i], alone[0], atol=1e-5)
        assert (mixed[1] - with_point[1]).abs().max() > 1e-4  # the padded row ignores its text


def test_first_prompts_draw_text_only_where_there_is_an_embedding() -> None:
    batch = shapes_on_noise(num_images=2)
    targets = select_masks(batch, generator=torch.Generator().manual_seed(0))
    ok = torch.tensor([True, False] * 4)
    kinds = torch.cat(
        [
            first_prompts(
                targets, 0.2, 0.2, 0.6, generator=torch.Generator().manual_seed(s), text_ok=ok
            )[2]
            for s in range(20)
        ]
    ).view(20, 8)
    assert (kinds[:, ~ok] != TEXT).all() and (kinds[:, ok] == TEXT).float().mean() > 0.4
    coords, labels, kinds = first_prompts(
        targets, 0.2, 0.2, 0.6, text_ok=ok, generator=torch.Generator().manual_seed(1)
    )
    assert (labels[kinds == TEXT] == PAD).all()
    _, _, no_text = first_prompts(
        targets, 0.5, 0.5, 0.6, generator=torch.Generator().manual_seed(1)
    )
    assert (no_text != TEXT).all()  # no text branch: points and boxes only


class _Batches(L.LightningDataModule):
    batch_size = 2

    def __init__(self, batch) -> None:
        super().__init__()
        self.batch = batch

    def train_dataloader(self):
        return DataLoader([self.batch] * 3, batch_size=None)

    def val_dataloader(self):
        return DataLoader([self.batch], batch_size=None)


def _named_shapes():
    batch = shapes_on_noise(num_images=2)
    batch.categories = [["disk", "rectangle", "triangle", "ring"]] * 2
    batch.category_ids = torch.tensor([[1, 2, 3, 4]] * 2)
    batch.image_hw = torch.tensor([[64, 64]] * 2)
    return batch


def test_training_steps_move_text_proj_and_leave_clip_frozen_and_out_of_exports(clip_files) -> None:
    module = SamModule(
        tiny_sam(text_embed_dim=E),
        OptimConfig(lr=1e-2, warmup_epochs=0),
        interactive=InteractiveConfig(num_click_rounds=1, num_mask_only_rounds=1, text_prob=1.0),
        text=text_cfg(clip_files, category_ratio=0.5),
        val_max_clicks=2,
    )
    clip_before = copy.deepcopy(module.clip_encoder.state_dict())
    proj_before = module.model.prompt_encoder.text_proj.weight.detach().clone()
    trainer = cpu_trainer(max_steps=3)
    trainer.fit(module, datamodule=_Batches(_named_shapes()))
    after = module.clip_encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in clip_before.items())
    assert not torch.equal(module.model.prompt_encoder.text_proj.weight, proj_before)
    assert not any("clip" in k for k in module.state_dict())  # frozen CLIP: not in checkpoints
    assert not any("clip" in k for k in module.exports()["sam"][0])
    metrics = module.last_val_metrics
    for name in ("miou_text", "miou_text_wrong", "miou_region", "miou_whole_image", "coco_mask_ap"):
        assert name in metrics, (name, sorted(metrics))
    rows = text_prompt_rows(module, _named_shapes(), 3)
    assert [label for label, _ in rows] == [
        "text prompt: category phrase",
        "text prompt: region embedding",
    ]
    assert len(rows[0][1]) == len(rows[1][1]) == 3


def test_text_width_mismatch_is_a_clear_error(clip_files) -> None:
    with pytest.raises(ValueError, match="needs model.text_embed_dim=24"):
        SamModule(tiny_sam(), OptimConfig(), text=text_cfg(clip_files))


def test_predictor_prompts_with_a_phrase_alone_or_with_a_point(clip_files) -> None:
    cfg = text_cfg(clip_files)
    predictor = SamPredictor(
        _perturbed(tiny_sam(text_embed_dim=E)), text_encoder=cfg.build_encoder()
    )
    predictor.set_image((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8))
    masks, scores, logits = predictor.predict(text="a dog", multimask_output=False)
    assert masks.shape == (1, 48, 64) and scores.shape == (1,)
    other = predictor.predict(text="a photo of a chair", multimask_output=False)[2]
    assert (logits - other).abs().max() > 1e-4
    both = predictor.predict(text="a dog", point_coords=[[10, 20]], point_labels=[1])
    assert both[0].shape == (3, 48, 64)
    with pytest.raises(ValueError, match="text_encoder"):
        SamPredictor(tiny_sam(text_embed_dim=E)).encode_text("a dog")


@pytest.fixture(scope="module")
def sample_shards(tmp_path_factory):
    from data_prep.sample import build_sample

    out = tmp_path_factory.mktemp("sample")
    build_sample(str(out), seed=0, workers=1)
    return out


def test_precomputed_region_embeddings_agree_with_on_the_fly(
    clip_files, sample_shards, tmp_path, capfd
) -> None:
    cfg_path, ckpt = clip_files
    out = tmp_path / "val_clip"
    args = [
        "clip-embed",
        str(sample_shards / "sam" / "val"),
        str(out),
        "--clip",
        cfg_path,
        "--pretrained",
        ckpt,
        "--image-size",
        "64",
        "--min-area",
        "50",
        "--workers",
        "2",
        "--no-progress",
    ]
    res = call_main(prep_cli.main, args, capfd)
    assert res.returncode == 0, res.stderr[-3000:]
    again = call_main(prep_cli.main, args, capfd)  # resumes: no work
    assert again.returncode == 0 and "region_below_min_area" in again.stdout
    text = TextPrompts(text_cfg(clip_files).build_encoder(), text_cfg(clip_files))
    batches = read_all_batches(out, 64)
    assert all(b.region_embeds is not None and b.region_embeds.shape[-1] == E for b in batches)
    n_checked = 0
    for batch in batches:
        targets = select_masks(batch, min_area=1, generator=torch.Generator().manual_seed(0))
        pre, pre_ok = text.regions(batch, targets)
        batch.region_embeds = None
        fly, fly_ok = text.regions(batch, targets)
        assert torch.equal(pre_ok, fly_ok)
        assert (pre[pre_ok] - fly[fly_ok]).abs().max() < 2e-3  # float16 storage
        n_checked += int(pre_ok.sum())
    assert n_checked >= 5
    plain = read_all_batches(sample_shards / "sam" / "val", 64)
    assert all(b.region_embeds is None for b in plain)
