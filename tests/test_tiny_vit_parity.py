"""Our TinyViT SAM against the reference modules: the released LiteMedSAM checkpoint read as it
is (embeddings, mask logits, the predictor on a real odd-sized image), MobileSAM's 1024-px
geometry on weights saved in MobileSAM's layout, and export back to that layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lite_medsam_helpers import (
    lite_medsam_path,
    randomise_,
    reference_lite_medsam,
    reference_mobile_sam,
    stardist_nuclei,
)

from sam_train.models.pixels import normalise_pixels
from sam_train.models.sam.sam import build_tiny_vit_sam
from sam_train.predictor import SamPredictor
from sam_train.weights.export import export
from sam_train.weights.safetensors_io import save_weights
from sam_train.weights.sam_loading import load_sam

TOL = 1e-4


@pytest.fixture(scope="module")
def lite():
    """(ours, reference, input [1, 3, 256, 256], our embedding, reference embedding)."""
    torch.manual_seed(0)
    ours, ref = load_sam(lite_medsam_path()), reference_lite_medsam()
    rgb, _ = stardist_nuclei()
    x = torch.from_numpy(rgb[::2, ::2].copy()).permute(2, 0, 1)  # 512 -> 256 px
    x = normalise_pixels(x, "min_max")[None]
    with torch.no_grad():
        return ours, ref, x, ours.embed_images(x), ref.image_encoder(x)


def test_lite_medsam_is_read_with_its_architecture_and_preprocessing(lite):
    ours = lite[0]
    a = ours.architecture
    assert a["encoder"] == "tiny_vit" and a["image_size"] == 256 and a["stem_stride"] == 1
    assert (a["embed_dims"], a["depths"]) == ([64, 128, 160, 320], [2, 2, 6, 2])
    assert (a["num_heads"][1:], a["window_sizes"][1:]) == ([4, 5, 10], [7, 14, 7])
    assert ours.pixel_norm == "min_max"
    assert ours.image_encoder.img_size // ours.image_encoder.patch_size == 64
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in lite[1].parameters())  # 9.8 M


def test_image_embeddings_match_the_reference(lite):
    emb, ref_emb = lite[3], lite[4]
    assert emb.shape == ref_emb.shape == (1, 256, 64, 64)
    assert (emb - ref_emb).abs().max() < TOL


def _prompts(k: int, size: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    xy0 = torch.rand(k, 2, generator=g) * size * 0.6
    boxes = torch.cat([xy0, xy0 + 10 + torch.rand(k, 2, generator=g) * size * 0.35], 1)
    return dict(
        coords=torch.rand(k, 3, 2, generator=g) * size,
        labels=torch.tensor([[1, 0, 1], [1, 1, -1], [0, 1, 1]])[:k],
        boxes=boxes,  # [K, 4] xyxy
        masks=torch.randn(k, 1, 256, 256, generator=g) * 4,  # 4 x the 64 x 64 grid
    )


def _reference_decode(ref, emb, points=None, boxes=None, masks=None, multimask=True):
    sparse, dense = ref.prompt_encoder(points=points, boxes=boxes, masks=masks)
    return ref.mask_decoder(
        image_embeddings=emb,
        image_pe=ref.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


PROMPT_KINDS = ["points", "boxes", "box+points", "points+mask", "mask"]


def _check_decoders(ours, ref, emb, ref_emb, kind: str, size: int, multimask: bool) -> None:
    p = _prompts(3, size, seed=len(kind))
    pts = (p["coords"], p["labels"]) if "points" in kind else None
    boxes = p["boxes"] if "box" in kind else None
    masks = p["masks"] if "mask" in kind else None
    if kind == "mask":  # a mask alone: one point per prompt, as the reference needs a batch size
        pts = (p["coords"][:, :1], torch.ones(3, 1, dtype=torch.long))
    with torch.no_grad():
        low, iou = ours.decode(
            emb, points=pts, boxes=boxes, mask_inputs=masks, multimask_output=multimask
        )
        ref_low, ref_iou = _reference_decode(ref, ref_emb, pts, boxes, masks, multimask)
    assert low.shape == ref_low.shape == (3, 3 if multimask else 1, 256, 256)
    assert (low - ref_low).abs().max() < TOL, kind
    assert (iou - ref_iou).abs().max() < TOL, kind


@pytest.mark.parametrize("kind", PROMPT_KINDS)
@pytest.mark.parametrize("multimask", [True, False])
def test_mask_logits_match_the_reference(lite, kind, multimask):
    ours, ref, _, emb, ref_emb = lite
    _check_decoders(ours, ref, emb, ref_emb, kind, 256, multimask)


def test_predictor_gives_the_reference_masks_on_an_odd_sized_real_image(lite):
    """Our SamPredictor on lite_medsam.pth against segment-anything's SamPredictor running the
    reference modules, LiteMedSAM's min-max scaling written as SAM's mean / std (it is affine:
    mean = the resized image's minimum, std = its range)."""
    seg = pytest.importorskip("segment_anything")
    from segment_anything.utils.transforms import ResizeLongestSide

    ours, ref = lite[0], lite[1]
    rgb, labels = stardist_nuclei()
    image = np.ascontiguousarray(rgb[37:374, 11:500])  # 337 x 489: odd sides, not square
    resized = ResizeLongestSide(256).apply_image(image).astype(np.float32)
    lo, hi = float(resized.min()), float(resized.max())
    theirs = seg.SamPredictor(
        seg.modeling.Sam(
            ref.image_encoder,
            ref.prompt_encoder,
            ref.mask_decoder,
            pixel_mean=[lo] * 3,
            pixel_std=[hi - lo] * 3,
        ).eval()
    )
    mine = SamPredictor(ours)
    mine.set_image(image)
    theirs.set_image(image)
    crop = labels[37:374, 11:500]
    ids = [i for i in np.unique(crop) if i][:6]
    agree = []
    for i in ids:
        ys, xs = np.nonzero(crop == i)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
        point = np.array([[xs.mean(), ys.mean()]])
        for prompt in (dict(box=box), dict(point_coords=point, point_labels=np.array([1]))):
            m1, s1, _ = mine.predict(**prompt, multimask_output=False)
            m2, s2, _ = theirs.predict(**prompt, multimask_output=False)
            assert abs(s1 - s2).max() < 1e-3
            agree.append((m1 == m2).mean())
    assert min(agree) >= 0.999, agree


@pytest.fixture(scope="module")
def mobile(tmp_path_factory):
    """A MobileSAM (random weights, reference modules) saved in MobileSAM's layout, read back."""
    ref = randomise_(reference_mobile_sam(), seed=3).eval()  # eval after: bias cache
    path = tmp_path_factory.mktemp("mobile") / "mobile_sam.pt"
    torch.save(ref.state_dict(), path)
    return load_sam(path), ref, path


def test_mobile_sam_geometry_matches_the_reference(mobile):
    ours, ref, _ = mobile
    a = ours.architecture
    assert (a["image_size"], a["stem_stride"], ours.pixel_norm) == (1024, 4, "imagenet")
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb, ref_emb = ours.embed_images(x), ref.image_encoder(x)
    assert emb.shape == (1, 256, 64, 64)
    assert (emb - ref_emb).abs().max() < TOL
    for kind in ("points", "boxes", "points+mask"):
        _check_decoders(ours, ref, emb, ref_emb, kind, 1024, multimask=True)


def test_export_to_the_official_layout_is_bit_identical_and_loads_strictly(tmp_path):
    torch.manual_seed(0)
    sam = build_tiny_vit_sam(image_size=256, stem_stride=1, pixel_norm="min_max")
    src = save_weights(
        tmp_path / "untrained.safetensors", sam.state_dict(), {"architecture": sam.architecture}
    )
    out = export(src, "sam", tmp_path / "untrained.sam.pth")
    official = torch.load(out, map_location="cpu", weights_only=True)
    mine = sam.state_dict()
    assert sorted(official) == sorted(mine)  # (safetensors stores keys sorted)
    assert all(torch.equal(official[k], mine[k]) for k in mine)
    reference_lite_medsam(official)  # strict
    # the released file goes through our reader and back unchanged
    again = export(lite_medsam_path(), "sam", tmp_path / "lite.sam.pth")
    original = torch.load(lite_medsam_path(), map_location="cpu", weights_only=True)
    back = torch.load(again, map_location="cpu", weights_only=True)
    assert list(back) == list(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    assert load_sam(again).pixel_norm == "min_max"


def test_hf_export_is_refused_in_one_line(tmp_path, capfd):
    from sam_train.cli import export as export_cli

    code = None
    try:
        code = export_cli.main(
            [str(lite_medsam_path()), "--format", "hf", "--out", str(tmp_path / "hf")]
        )
    except SystemExit as exit_:
        code = exit_.code
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "TinyViT" in err[0] and "SamModel" in err[0]
    assert not (tmp_path / "hf").exists()


def test_an_unknown_layout_is_refused_naming_what_was_expected(tmp_path):
    from sam_train.weights.checkpoints import WeightsError

    path = tmp_path / "other.pth"
    torch.save({"backbone.stem.weight": torch.zeros(2, 3)}, path)
    with pytest.raises(WeightsError, match="MobileSAM / LiteMedSAM"):
        load_sam(path)
