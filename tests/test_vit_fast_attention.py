"""The two relative-position attention paths (the bias folded into q / k, `fold_rel_pos`, and
the explicit products with the dense bias) against the dense-bias reference math and against
the official segment-anything attention: same outputs and gradients; and which path runs when."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sam_train.models.vit as vit
from sam_train.models.vit import (
    DENSE_BIAS_MAX_BYTES,
    Attention,
    Block,
    decomposed_rel_pos_bias,
    dense_bias_fits,
    fold_rel_pos,
)


def _dense_reference(attn: Attention, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The former forward: the [B, nh, N, N] bias passed to SDPA as an additive mask."""
    b, n, d = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    bias = decomposed_rel_pos_bias(q, hw, attn.rel_pos_h, attn.rel_pos_w)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return attn.proj(out.transpose(1, 2).reshape(b, n, d))


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _spy_paths(monkeypatch) -> list[str]:
    """Record which relative-position path each `Attention` call takes."""
    taken: list[str] = []
    fold, dense = vit.fold_rel_pos, vit.decomposed_rel_pos_bias
    monkeypatch.setattr(vit, "fold_rel_pos", lambda *a: taken.append("fold") or fold(*a))
    monkeypatch.setattr(
        vit, "decomposed_rel_pos_bias", lambda *a: taken.append("dense") or dense(*a)
    )
    return taken


def _assert_matches_reference(attn: Attention, x: torch.Tensor, hw: tuple[int, int]) -> None:
    ours = attn(x, hw)
    ref = _dense_reference(attn, x, hw)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    params = [x, *attn.parameters()]
    g_ours = torch.autograd.grad(ours.square().sum(), params)
    g_ref = torch.autograd.grad(ref.square().sum(), params)
    for a, b in zip(g_ours, g_ref):
        # float32 sums in a different order: agree to 1e-5 of the gradient's scale
        torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("limit, path", [(0, "fold"), (DENSE_BIAS_MAX_BYTES, "dense")])
@pytest.mark.parametrize(
    "hw, table_size",
    [((4, 4), 4), ((3, 5), 5), ((6, 4), 6), ((4, 4), 7)],  # square, h < w, h > w, resized table
)
def test_both_paths_equal_dense_bias_forward_and_backward(hw, table_size, limit, path, monkeypatch):
    torch.manual_seed(0)
    attn = Attention(24, 3, rel_pos_size=table_size, dense_bias_max_bytes=limit)
    _randomise(attn, 1)
    x = torch.randn(2, hw[0] * hw[1], 24, requires_grad=True)
    taken = _spy_paths(monkeypatch)
    attn(x, hw)
    assert taken == [path]
    monkeypatch.undo()
    _assert_matches_reference(attn, x, hw)


def test_one_module_takes_each_path_by_matrix_size(monkeypatch):
    """The limit is on B * nh * N * N * 4 bytes of the call: with a limit between the 4 x 4 and
    the 6 x 6 grid, the small call runs explicitly, the large one folded, both exact."""
    torch.manual_seed(0)
    small, large = (4, 4), (6, 6)
    limit = 2 * 3 * 36 * 36 * 4 - 1  # batch 2, 3 heads: one byte short of the 6 x 6 matrices
    attn = Attention(24, 3, rel_pos_size=6, dense_bias_max_bytes=limit)
    _randomise(attn, 5)
    for hw, path in ((small, "dense"), (large, "fold")):
        x = torch.randn(2, hw[0] * hw[1], 24, requires_grad=True)
        taken = _spy_paths(monkeypatch)
        attn(x, hw)
        assert taken == [path], hw
        monkeypatch.undo()
        _assert_matches_reference(attn, x, hw)


def test_default_limit_folds_the_1024_encoder_and_not_the_small_grids():
    """The default rule on the SAM encoders' real shapes (expanded views: no memory)."""

    def q(b: int, nh: int, n: int) -> torch.Tensor:
        return torch.empty(1, 1, 1, 64).expand(b, nh, n, 64)

    assert not dense_bias_fits(q(1, 12, 64 * 64))  # sam_vit_b 1024, global: 805 MB
    assert not dense_bias_fits(q(1, 3, 64 * 64))  # sam_vit_tiny 1024, global: 201 MB
    assert not dense_bias_fits(q(25, 12, 14 * 14))  # sam_vit_b 1024, 25 windows: 46 MB
    assert dense_bias_fits(q(9, 12, 14 * 14))  # sam_vit_b 512, 9 windows: 17 MB
    assert dense_bias_fits(q(1, 3, 32 * 32))  # sam_vit_tiny 512, global: 13 MB
    assert dense_bias_fits(q(1, 3, 16 * 16))  # sam_vit_tiny 256, global
    assert dense_bias_fits(q(4, 3, 14 * 14))  # sam_vit_tiny 256, 4 windows
    assert not dense_bias_fits(q(2, 12, 14 * 14), max_bytes=0)
    with pytest.raises(ValueError, match="dense_bias_max_bytes"):
        Attention(24, 3, rel_pos_size=4, dense_bias_max_bytes=-1)


def test_fold_reproduces_the_bias_exactly():
    """q'.k'^T = scale * q.k^T + bias, entry by entry."""
    torch.manual_seed(0)
    h, w, hd = 3, 4, 8
    q, k = torch.randn(2, 2, h * w, hd), torch.randn(2, 2, h * w, hd)
    rel_h, rel_w = torch.randn(2 * h - 1, hd), torch.randn(2 * w - 1, hd)
    qf, kf = fold_rel_pos(q, k, (h, w), rel_h, rel_w)
    assert qf.shape == kf.shape == (2, 2, h * w, hd + h + w)
    expected = q @ k.transpose(-1, -2) * hd**-0.5 + decomposed_rel_pos_bias(q, (h, w), rel_h, rel_w)
    torch.testing.assert_close(qf @ kf.transpose(-1, -2), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window, rel_pos", [(0, 8), (4, 4), (0, 0)])
def test_cpu_bf16_autocast_runs_explicit_attention_close_to_fp32(window, rel_pos, monkeypatch):
    """Under CPU bf16 autocast the block takes the plain-matmul path (the fused kernel is not
    called) and stays within bf16 rounding of the fp32 block: outputs and gradients of the
    input and the relative-position tables within 2% of their scale."""
    torch.manual_seed(0)
    block = Block(32, 4, window_size=window, rel_pos_size=rel_pos)
    _randomise(block, 4)
    x = torch.randn(2, 64, 32, requires_grad=True)
    params = [x, *block.parameters()]
    ref = block(x, (8, 8))
    g_ref = torch.autograd.grad(ref.square().sum(), params)

    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = block(x, (8, 8))
    g_got = torch.autograd.grad(got.float().square().sum(), params)
    assert not calls, "the fused kernel ran under CPU bf16 autocast"
    torch.testing.assert_close(got.float(), ref, atol=0.02 * ref.abs().max().item(), rtol=0)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a.float(), b, atol=0.02 * b.abs().max().item(), rtol=0)
    block.attn.dense_bias_max_bytes = 0  # fp32 above the dense-bias limit: the fused kernel again
    block(x, (8, 8))
    assert calls


# ------------------------------------------------------------------------------ official SAM
sam_encoder = pytest.importorskip("segment_anything.modeling.image_encoder")


@pytest.mark.parametrize("limit", [0, DENSE_BIAS_MAX_BYTES])  # folded, explicit
@pytest.mark.parametrize("hw", [(8, 8), (6, 10)])
def test_attention_matches_official_segment_anything(hw, limit):
    torch.manual_seed(0)
    dim, heads = 32, 4
    official = sam_encoder.Attention(dim, heads, qkv_bias=True, use_rel_pos=True, input_size=hw)
    _randomise(official, 2)
    ours = Attention(dim, heads, rel_pos_size=max(hw), dense_bias_max_bytes=limit)
    # the official tables are sized per axis; ours square: load only where the shapes agree
    ours.load_state_dict(
        {k: v for k, v in official.state_dict().items() if not k.startswith("rel_pos")},
        strict=False,
    )
    with torch.no_grad():
        ours.rel_pos_h = torch.nn.Parameter(official.rel_pos_h.clone())
        ours.rel_pos_w = torch.nn.Parameter(official.rel_pos_w.clone())
    x = torch.randn(2, *hw, dim)
    expected = official(x)  # [B, H, W, C]
    got = ours(x.reshape(2, hw[0] * hw[1], dim), hw).reshape(2, *hw, dim)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_windowed_block_matches_official_segment_anything():
    """A windowed block with padding (10 x 10 grid, windows of 4) and relative positions."""
    torch.manual_seed(0)
    dim, heads, window = 32, 4, 4
    official = sam_encoder.Block(
        dim, heads, use_rel_pos=True, window_size=window, input_size=(10, 10)
    )
    _randomise(official, 3)
    ours = Block(dim, heads, window_size=window, rel_pos_size=window)
    state = {k.replace("mlp.lin", "mlp.fc"): v for k, v in official.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 10, 10, dim)
    expected = official(x)
    got = ours(x.reshape(2, 100, dim), (10, 10)).reshape(2, 10, 10, dim)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
