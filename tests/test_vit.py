"""The shared ViT backbone: sizes, shapes, sin-cos table, windowed attention."""

from __future__ import annotations

import pytest
import torch

from sam_train.models.pos_embed import sincos_2d
from sam_train.models.vit import VIT_SIZES, Block, VisionTransformer, vit_size


def test_named_sizes_match_the_papers():
    assert vit_size("huge") == VIT_SIZES["huge"]
    assert (VIT_SIZES["huge"].embed_dim, VIT_SIZES["huge"].depth, VIT_SIZES["huge"].num_heads) == (
        1280,
        32,
        16,
    )
    assert (VIT_SIZES["base"].embed_dim, VIT_SIZES["base"].depth) == (768, 12)
    with pytest.raises(ValueError, match="unknown ViT size"):
        vit_size("giant")


def test_timm_style_parameter_names():
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    names = set(dict(vit.named_parameters()))
    for name in [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.weight",
        "norm.weight",
    ]:
        assert name in names


def test_forward_shapes_with_and_without_class_token():
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    assert vit(torch.randn(2, 3, 64, 64)).shape == (2, 1 + 16, 32)
    assert vit.forward_grid(torch.randn(2, 3, 64, 64)).shape == (2, 32, 4, 4)
    sam_like = VisionTransformer(
        img_size=64,
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
        class_token=False,
        pos_embed="learned",
        window_size=2,
        global_attn_indexes=(1,),
        use_rel_pos=True,
        final_norm=False,
    )
    assert sam_like.forward_grid(torch.randn(1, 3, 96, 64)).shape == (1, 32, 6, 4)


def test_image_not_divisible_by_patch_is_a_clear_error():
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        vit(torch.randn(1, 3, 30, 32))


def test_sincos_table_is_fixed_and_matches_formula():
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    assert not vit.pos_embed.requires_grad
    assert torch.equal(vit.pos_embed[0, 0], torch.zeros(16))
    assert torch.allclose(vit.pos_embed[0, 1:], sincos_2d(16, 4, 4))
    table = sincos_2d(16, 4, 4)
    # first half encodes the column: tokens in one column share it, the row half differs
    assert torch.allclose(table[0, :8], table[4, :8]) and not torch.allclose(
        table[0, 8:], table[4, 8:]
    )


def test_window_covering_the_grid_equals_global_attention():
    torch.manual_seed(0)
    glob = Block(32, 2, window_size=0)
    win = Block(32, 2, window_size=4)
    win.load_state_dict(glob.state_dict())
    x = torch.randn(2, 16, 32)
    assert torch.allclose(glob(x, (4, 4)), win(x, (4, 4)), atol=1e-6)


def test_windows_do_not_mix_tokens_across_windows():
    torch.manual_seed(0)
    block = Block(16, 2, window_size=2).eval()
    x = torch.randn(1, 16, 16)
    y = block(x, (4, 4))
    x2 = x.clone()
    x2[0, 15] += 10.0  # the bottom-right window
    y2 = block(x2, (4, 4))
    assert torch.allclose(y[0, 0], y2[0, 0]), "top-left window saw a bottom-right change"


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    x = torch.randn(2, 3, 32, 32)
    vit(x).sum().backward()
    ref = vit.blocks[0].attn.qkv.weight.grad.clone()
    vit.zero_grad()
    vit.grad_checkpointing = True
    vit(x).sum().backward()
    assert torch.allclose(vit.blocks[0].attn.qkv.weight.grad, ref, atol=1e-6)
