"""A tiny open_clip model for text-prompt tests: registered from a config file, saved locally."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip_files(folder: Path, name: str = "tiny-clip-test", seed: int = 0) -> tuple[str, str]:
    """Write `name.json` (an open_clip model config) and `name.pt` (its random weights); returns
    (config path, checkpoint path) for `load_open_clip(config, checkpoint)`."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / f"{name}.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    ckpt = folder / f"{name}.pt"
    torch.save(model.state_dict(), ckpt)
    return str(cfg), str(ckpt)


def read_all_batches(path, img_size: int) -> list:
    """Every sample of the shards at `path`, in order, as stage-2 batches of 8."""
    from sam_train.data.sam_samples import SamSamplePrep, collate_sam
    from sam_train.data.shards import ShardStream, resolve_shards

    urls, _ = resolve_shards(str(path))
    stream = ShardStream(
        urls,
        SamSamplePrep(img_size, max_masks=64, min_mask_area=1),
        collate_sam,
        batch_size=8,
        resampled=False,
        shuffle_buffer=0,
        shuffle_shards=False,
    )
    return list(stream)
