"""Our SAM modules against the official segment-anything package at tiny sizes, random weights."""

from __future__ import annotations

from functools import partial

import pytest
import torch

sam_official = pytest.importorskip("segment_anything.modeling")

from sam_train.models.sam import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    TwoWayTransformer,
    build_sam,
)
from sam_train.weights.keymaps import (  # noqa: E402
    sam_encoder_state_from_official,
    sam_encoder_state_to_official,
    sam_state_from_official,
    sam_state_to_official,
)

DIM, IMG, GRID = 32, 128, 8


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere (norm weights, zero-initialised tables too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def _official_prompt_decoder():
    torch.manual_seed(0)
    pe = sam_official.PromptEncoder(
        embed_dim=DIM,
        image_embedding_size=(GRID, GRID),
        input_image_size=(IMG, IMG),
        mask_in_chans=16,
    )
    md = sam_official.MaskDecoder(
        transformer_dim=DIM,
        transformer=sam_official.TwoWayTransformer(
            depth=2, embedding_dim=DIM, mlp_dim=64, num_heads=4
        ),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=DIM,
    )
    _perturb(pe, 1)
    _perturb(md, 2)
    return pe.eval(), md.eval()


def _ours_prompt_decoder():
    pe = PromptEncoder(DIM, (GRID, GRID), (IMG, IMG), mask_in_chans=16)
    md = MaskDecoder(
        transformer_dim=DIM,
        transformer=TwoWayTransformer(depth=2, embedding_dim=DIM, num_heads=4, mlp_dim=64),
        iou_head_hidden_dim=DIM,
    )
    return pe.eval(), md.eval()


def _prompts(kind: str, k: int = 3):
    g = torch.Generator().manual_seed(3)
    coords = torch.rand(k, 2, 2, generator=g) * IMG
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])[:k]
    xy = torch.rand(k, 2, generator=g) * IMG / 2
    boxes = torch.cat([xy, xy + IMG / 3], dim=1)
    masks = torch.randn(k, 1, 4 * GRID, 4 * GRID, generator=g)
    return {
        "points": ((coords, labels), None, None),
        "boxes": (None, boxes, None),
        "points+boxes": ((coords, labels), boxes, None),
        "points+mask": ((coords, labels), None, masks),
        "boxes+mask": (None, boxes, masks),
        "mask": (None, None, masks),
    }[kind]


@pytest.mark.parametrize(
    "kind", ["points", "boxes", "points+boxes", "points+mask", "boxes+mask", "mask"]
)
@pytest.mark.parametrize("multimask", [True, False])
def test_prompt_encoder_and_decoder_match_official(kind: str, multimask: bool) -> None:
    ref_pe, ref_md = _official_prompt_decoder()
    pe, md = _ours_prompt_decoder()
    pe.load_state_dict(ref_pe.state_dict(), strict=True)
    md.load_state_dict(ref_md.state_dict(), strict=True)

    points, boxes, masks = _prompts(kind)
    with torch.no_grad():
        ref_sparse, ref_dense = ref_pe(points, boxes, masks)
        sparse, dense = pe(points, boxes, masks)
        torch.testing.assert_close(sparse, ref_sparse, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dense, ref_dense, atol=1e-5, rtol=1e-5)

        emb = torch.randn(1, DIM, GRID, GRID, generator=torch.Generator().manual_seed(4))
        ref_masks, ref_iou = ref_md(emb, ref_pe.get_dense_pe(), ref_sparse, ref_dense, multimask)
        ours_masks, ours_iou = md(emb, pe.get_dense_pe(), sparse, dense, multimask)
    assert ours_masks.shape == ref_masks.shape == (3, 3 if multimask else 1, 4 * GRID, 4 * GRID)
    torch.testing.assert_close(ours_masks, ref_masks, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_iou, ref_iou, atol=1e-5, rtol=1e-5)


def encoder_args(window: int) -> dict:
    """The image encoder both sides build: 64 wide, 4 blocks, global attention in 1 and 3."""
    return dict(
        img_size=IMG,
        patch_size=16,
        embed_dim=64,
        depth=4,
        num_heads=4,
        out_chans=DIM,
        window_size=window,
        global_attn_indexes=(1, 3),
    )


def _official_encoder(window: int) -> torch.nn.Module:
    torch.manual_seed(0)
    enc = sam_official.ImageEncoderViT(
        **encoder_args(window),
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
    )
    _perturb(enc, 5)
    return enc.eval()


@pytest.mark.parametrize("window", [4, 3])  # 3 pads the 8 x 8 grid to 9 x 9
def test_image_encoder_matches_official(window: int) -> None:
    ref = _official_encoder(window)
    ours = ImageEncoderViT(
        **encoder_args(window),
    ).eval()
    ours.load_state_dict(sam_encoder_state_from_official(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
    # the reverse map gives back the official layout exactly
    back = sam_encoder_state_to_official(ours.state_dict())
    ref_sd = ref.state_dict()
    assert back.keys() == ref_sd.keys()
    for k, v in ref_sd.items():
        assert torch.equal(back[k], v), k


def test_full_sam_state_dict_round_trip() -> None:
    """An official `Sam` checkpoint loads strictly into `build_sam` and maps back unchanged."""
    ref_pe, ref_md = _official_prompt_decoder()
    ref = sam_official.Sam(_official_encoder(4), ref_pe, ref_md)
    ours = build_sam(
        encoder_embed_dim=64,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        image_size=IMG,
        window_size=4,
        prompt_embed_dim=DIM,
        decoder_mlp_dim=64,
        decoder_num_heads=4,
        iou_head_hidden_dim=DIM,
    ).eval()
    ours.load_state_dict(sam_state_from_official(ref.state_dict()), strict=True)
    back = sam_state_to_official(ours.state_dict())
    assert back.keys() == ref.state_dict().keys()

    x = torch.randn(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(7))
    points = (torch.tensor([[[40.0, 70.0]]]), torch.tensor([[1]]))
    with torch.no_grad():
        emb = ref.image_encoder(x)
        sparse, dense = ref.prompt_encoder(points, None, None)
        ref_masks, ref_iou = ref.mask_decoder(
            emb, ref.prompt_encoder.get_dense_pe(), sparse, dense, True
        )
        masks, iou = ours(x, points=points, multimask_output=True)
    torch.testing.assert_close(masks, ref_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, ref_iou, atol=1e-4, rtol=1e-4)
