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
