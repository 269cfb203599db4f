"""Shapes and behaviour of our SAM modules (tiny sizes, CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_mae, tiny_sam

from sam_train.models.sam import (
    SAM_SIZES,
    ImageEncoderViT,
    build_sam_vit,
)
from sam_train.models.sam.transformer import TwoWayTransformer
from sam_train.weights.keymaps import sam_encoder_state_from_vit


def tiny_encoder(**overrides) -> ImageEncoderViT:
    kwargs = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,))
    return ImageEncoderViT(**{**kwargs, **overrides})


def test_encoder_1024_gives_64x64x256() -> None:
    enc = tiny_encoder(img_size=1024)
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 1024, 1024))
    assert out.shape == (1, 256, 64, 64)


@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (48, 32)])
def test_encoder_other_sizes(hw: tuple[int, int]) -> None:
    enc = tiny_encoder(out_chans=16, window_size=3)
    out = enc(torch.randn(2, 3, *hw))
    assert out.shape == (2, 16, hw[0] // 16, hw[1] // 16)


def test_encoder_rejects_size_not_divisible_by_patch() -> None:
    enc = ImageEncoderViT(
        img_size=64, embed_dim=32, depth=1, num_heads=2, out_chans=16, global_attn_indexes=(0,)
    )
    with pytest.raises(ValueError, match="divisible"):
        enc(torch.randn(1, 3, 70, 64))


def test_named_sizes_match_official_layouts() -> None:
    assert SAM_SIZES["b"].encoder_global_attn_indexes == (2, 5, 8, 11)
    assert SAM_SIZES["l"].encoder_global_attn_indexes == (5, 11, 17, 23)
    assert SAM_SIZES["h"].encoder_global_attn_indexes == (7, 15, 23, 31)
    sam = build_sam_vit("tiny", image_size=64, window_size=2)
    assert sam.image_encoder.embed_dim == 192 and len(sam.image_encoder.blocks) == 12
    assert sam.architecture["encoder_global_attn_indexes"] == [2, 5, 8, 11]


def test_decode_shares_one_embedding_per_image() -> None:
    sam = tiny_sam().eval()
    images = torch.randn(2, 3, 64, 64)
    coords = torch.tensor([[[10.0, 12.0]], [[40.0, 30.0]], [[33.0, 50.0]]])
    labels = torch.ones(3, 1, dtype=torch.long)
    index = torch.tensor([0, 1, 1])
    with torch.no_grad():
        emb = sam.embed_images(images)  # [2, 32, 4, 4]
        logits, iou = sam.decode(
            emb, points=(coords, labels), image_index=index, multimask_output=True
        )
        assert logits.shape == (3, 3, 16, 16) and iou.shape == (3, 3)
        for k in range(3):
            one, one_iou = sam.decode(
                emb[index[k] : index[k] + 1], points=(coords[k : k + 1], labels[k : k + 1])
            )
            torch.testing.assert_close(logits[k : k + 1], one, atol=1e-5, rtol=1e-5)
        single, _ = sam.decode(
            emb, points=(coords, labels), image_index=index, multimask_output=False
        )
        every, every_iou = sam.decode(
            emb, points=(coords, labels), image_index=index, multimask_output=None
        )
    assert single.shape == (3, 1, 16, 16) and every.shape == (3, 4, 16, 16)
    torch.testing.assert_close(every[:, :1], single)
    torch.testing.assert_close(every[:, 1:], logits)
    with pytest.raises(ValueError, match="image_index"):
        sam.decode(emb.repeat(2, 1, 1, 1), points=(coords, labels))


def test_gradients_reach_the_encoder() -> None:
    sam = tiny_sam().train()
    logits, iou = sam(
        torch.randn(1, 3, 64, 64),
        points=(torch.tensor([[[5.0, 5.0]]]), torch.ones(1, 1)),
        mask_inputs=torch.randn(1, 1, 16, 16),
    )
    (logits.mean() + iou.mean()).backward()
    for name in (
        "image_encoder.patch_embed.proj.weight",
        "image_encoder.neck.0.weight",
        "prompt_encoder.mask_downscaling.0.weight",
        "mask_decoder.iou_token.weight",
    ):
        grad = dict(sam.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_box_as_corner_points_equals_box_prompt() -> None:
    """Labels 2 / 3 write a box as points, so one batch can mix box and point prompts."""
    sam = tiny_sam().eval()
    emb = torch.randn(1, 32, 4, 4)
    box = torch.tensor([[8.0, 10.0, 40.0, 50.0]])
    with torch.no_grad():
        a, _ = sam.decode(emb, boxes=box)
        b, _ = sam.decode(emb, points=(box.view(1, 2, 2), torch.tensor([[2, 3]])), pad_points=False)
    torch.testing.assert_close(a, b)


def test_unit_clip_embeddings_give_tokens_at_the_scale_of_point_tokens() -> None:
    """CLIP embeddings are unit vectors; unscaled, their projected token would start ~sqrt(E)
    times smaller than a point token and the decoder would barely see it."""
    torch.manual_seed(0)
    pe = tiny_sam(text_embed_dim=512).prompt_encoder
    text = torch.nn.functional.normalize(torch.randn(64, 1, 512), dim=-1)
    points = (torch.rand(64, 1, 2) * 64, torch.ones(64, 1, dtype=torch.long))
    with torch.no_grad():
        text_tokens, _ = pe(None, None, None, text_embeds=text)
        point_tokens, _ = pe(points, None, None)
    ratio = text_tokens.norm(dim=-1).mean() / point_tokens[:, 0].norm(dim=-1).mean()
    assert 0.25 < ratio < 4, ratio


def test_text_tokens_join_the_sparse_tokens() -> None:
    sam = tiny_sam(text_embed_dim=12).eval()
    pe = sam.prompt_encoder
    points = (torch.tensor([[[5.0, 6.0]]]), torch.ones(1, 1, dtype=torch.long))
    text = torch.randn(1, 3, 12)
    sparse, dense = pe(points, None, None, text_embeds=text)
    assert sparse.shape == (1, 1 + 1 + 3, 32)  # point, padding point, 3 text tokens
    torch.testing.assert_close(sparse[:, 2:], pe.text_proj(text * 12**0.5))
    text_only, _ = pe(None, None, None, text_embeds=text)
    assert text_only.shape == (1, 3, 32) and dense.shape == (1, 32, 4, 4)
    emb = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        with_text, _ = sam.decode(emb, points=points, text_embeds=text)
        without, _ = sam.decode(emb, points=points)
    assert not torch.allclose(with_text, without)
    with pytest.raises(ValueError, match="text_embed_dim"):
        tiny_sam().prompt_encoder(points, None, None, text_embeds=text)
    assert not any("text_proj" in k for k in tiny_sam().state_dict())


def test_no_mask_embed_fills_the_dense_grid() -> None:
    sam = tiny_sam()
    _, dense = sam.prompt_encoder(None, torch.tensor([[1.0, 2.0, 30.0, 40.0]]), None)
    assert dense.shape == (1, 32, 4, 4)
    torch.testing.assert_close(dense[0, :, 2, 3], sam.prompt_encoder.no_mask_embed.weight[0])


# ----------------------------------------------------------------------------------------------
# every step of the two-way transformer matters

STEPS = [
    "layers.0.self_attn",
    "layers.0.cross_attn_token_to_image",
    "layers.0.mlp",
    "layers.0.cross_attn_image_to_token",
    "layers.1.self_attn",
    "layers.1.cross_attn_token_to_image",
    "layers.1.mlp",
    "layers.1.cross_attn_image_to_token",
    "final_attn_token_to_image",
]


class _Zero(torch.nn.Module):
    def forward(self, *args):
        return torch.zeros_like(args[0])


@pytest.mark.parametrize("step", STEPS)
def test_each_two_way_step_changes_the_output(step: str, monkeypatch) -> None:
    torch.manual_seed(0)
    tr = TwoWayTransformer(depth=2, embedding_dim=32, num_heads=4, mlp_dim=64).eval()
    img, pe, tokens = torch.randn(2, 32, 4, 4), torch.randn(1, 32, 4, 4), torch.randn(2, 7, 32)
    with torch.no_grad():
        ref_q, ref_k = tr(img, pe, tokens)
        parent_name, _, child = step.rpartition(".")
        monkeypatch.setattr(tr.get_submodule(parent_name) if parent_name else tr, child, _Zero())
        q, k = tr(img, pe, tokens)
    assert not torch.allclose(q, ref_q, atol=1e-4), f"{step} does not change the tokens"
    if step != "final_attn_token_to_image":
        assert not torch.allclose(k, ref_k, atol=1e-4), f"{step} does not change the image tokens"


def test_stage1_encoder_loads_into_the_sam_encoder() -> None:
    mae = tiny_mae()  # img 32, patch 8, width 64, depth 2: a 4 x 4 grid with a class token
    enc = tiny_encoder(patch_size=8, embed_dim=64, num_heads=4, out_chans=16, window_size=4)
    state = sam_encoder_state_from_vit(mae.encoder.state_dict(), (8, 8))
    missing, unexpected = enc.load_state_dict(state, strict=False)
    assert not unexpected
    assert all("rel_pos" in k or k.startswith("neck.") for k in missing)
    torch.testing.assert_close(enc.blocks[1].mlp.fc2.weight, mae.encoder.blocks[1].mlp.fc2.weight)
    assert enc.pos_embed.shape == (1, 64, 64)


def test_no_weight_decay_names_tables_and_tokens() -> None:
    names = tiny_sam().no_weight_decay()
    for expected in (
        "image_encoder.pos_embed",
        "image_encoder.blocks.0.attn.rel_pos_h",
        "prompt_encoder.point_embeddings.0.weight",
        "prompt_encoder.no_mask_embed.weight",
        "mask_decoder.iou_token.weight",
        "mask_decoder.mask_tokens.weight",
    ):
        assert expected in names
    assert not any("qkv" in n or "neck" in n or "mask_downscaling" in n for n in names)
