"""MaskedAutoencoder behaviour: masking, the mask token, positions, the loss, overfitting."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_mae

from sam_train.data.sample_images import load_sample_photo
from sam_train.data.transforms import MaeEvalTransform
from sam_train.models.mae import MaskedAutoencoder, random_masking


@pytest.mark.parametrize("length", [4, 16, 49, 196])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.75, 0.9])
def test_masking_keeps_exactly_int_L_times_one_minus_ratio(length, ratio):
    x = torch.randn(3, length, 8)
    kept, mask, _ = random_masking(x, ratio)
    n_keep = int(length * (1 - ratio))
    assert kept.shape == (3, n_keep, 8)
    assert torch.equal(mask.sum(1), torch.full((3,), float(length - n_keep)))


def test_masks_differ_between_samples():
    _, mask, _ = random_masking(torch.randn(8, 64, 4), 0.75)
    assert len({tuple(m.tolist()) for m in mask}) == 8


def test_given_noise_reproduces_the_mask_and_keeps_the_lowest_noise():
    x = torch.randn(2, 16, 4)
    noise = torch.rand(2, 16)
    kept1, mask1, _ = random_masking(x, 0.75, noise)
    kept2, mask2, _ = random_masking(x, 0.75, noise.clone())
    assert torch.equal(mask1, mask2) and torch.equal(kept1, kept2)
    lowest = noise.argsort(dim=1)[:, :4]
    for b in range(2):
        assert set(torch.nonzero(mask1[b] == 0).flatten().tolist()) == set(lowest[b].tolist())


def test_restore_indices_invert_the_shuffle():
    x = torch.arange(2 * 10, dtype=torch.float).reshape(2, 10, 1)
    noise = torch.rand(2, 10)
    ids_shuffle = noise.argsort(dim=1)
    _, _, ids_restore = random_masking(x, 0.5, noise)
    shuffled = torch.gather(x, 1, ids_shuffle.unsqueeze(-1))
    restored = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1))
    assert torch.equal(restored, x)


def test_forward_contract_shapes(mae):
    imgs = torch.randn(2, 3, 32, 32)
    loss, pred, mask = mae(imgs)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert pred.shape == (2, 16, 8 * 8 * 3)
    assert mask.shape == (2, 16) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert int(mask[0].sum()) == 16 - int(16 * 0.25)


def test_one_shared_mask_token_parameter(mae):
    names = [n for n, _ in mae.named_parameters() if "mask_token" in n]
    assert names == ["mask_token"]
    assert mae.mask_token.shape == (1, 1, 32)


def test_masked_positions_get_different_predictions(mae):
    """Every masked position starts from the same mask token; only the positional embedding
    (and attention) can tell them apart, so equal predictions would mean positions are lost."""
    mae.eval()
    _, pred, mask = mae(torch.randn(1, 3, 32, 32))
    masked_preds = pred[0][mask[0] == 1]
    assert masked_preds.shape[0] == 12
    assert torch.cdist(masked_preds, masked_preds).fill_diagonal_(1.0).min() > 1e-4


def test_loss_ignores_visible_patches_and_depends_on_masked_ones(mae):
    imgs = torch.randn(1, 3, 32, 32)
    noise = torch.rand(1, 16)
    loss, pred, mask = mae(imgs, noise=noise)
    target = mae.patch_targets(imgs)
    visible = mask[0] == 0
    changed = pred.detach().clone()
    changed[0, visible] += 5.0
    assert torch.allclose(mae.forward_loss(imgs, changed, mask), loss)
    changed = pred.detach().clone()
    changed[0, ~visible] += 1.0
    assert not torch.allclose(mae.forward_loss(imgs, changed, mask), loss)
    expected = ((pred - target) ** 2).mean(-1)[0][~visible].mean()
    assert torch.allclose(loss, expected)


def test_norm_pix_targets_are_normalised_per_patch():
    model = tiny_mae(norm_pix_loss=True)
    target = model.patch_targets(torch.rand(2, 3, 32, 32) * 5 + 3)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 16), atol=1e-4)
    assert torch.allclose(target.var(-1), torch.ones(2, 16), atol=1e-2)


def test_pred_to_pixels_undoes_patch_normalisation():
    model = tiny_mae(norm_pix_loss=True)
    imgs = torch.randn(2, 3, 32, 32)
    pixels = model.pred_to_pixels(imgs, model.patch_targets(imgs))
    assert torch.allclose(pixels, model.patchify(imgs), atol=1e-4)


def test_patchify_round_trip(mae):
    imgs = torch.randn(2, 3, 32, 32)
    assert torch.equal(mae.unpatchify(mae.patchify(imgs)), imgs)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_mask_ratio_outside_open_interval_is_refused(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_mae(mask_ratio=ratio)
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_mae()(torch.randn(1, 3, 32, 32), mask_ratio=ratio)


def test_official_mae_argument_names_are_accepted():
    model = MaskedAutoencoder(
        img_size=32,
        patch_size=8,
        in_chans=3,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        mlp_ratio=2.0,
        norm_pix_loss=True,
    )
    assert model.decoder_pred.out_features == 8 * 8 * 3


def test_tiny_mae_overfits_a_few_images():
    torch.manual_seed(0)
    model = tiny_mae()
    to_tensor = MaeEvalTransform(32)
    imgs = torch.stack(
        [to_tensor(load_sample_photo(n)) for n in ["astronaut", "chelsea", "coffee", "rocket"]]
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(300):
        loss, _, _ = model(imgs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first / 5, (first, loss.item())
