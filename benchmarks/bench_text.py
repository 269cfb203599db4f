"""Cost of the text-prompt (CLIP) branch per training step, with and without precomputed region
embeddings (`sam-prep clip-embed`).

    .venv/bin/python benchmarks/bench_text.py --clip ViT-B-32 --masks 16 --images 2 --size 1024

The CLIP weights do not change the cost, so the model is built with random weights (no
download). Measured: `TextPrompts.for_training` for one batch of `--masks` large-enough masks,
(a) on the fly: crops + the CLIP image tower, (b) precomputed: a lookup in `region_embeds`;
and the text tower for `--phrases` category phrases (cached after the first step when frozen).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sam_train.data.batch import SamBatch
from sam_train.models.sam.text import ClipPromptEncoder
from sam_train.training.prompts import select_masks
from sam_train.training.text_prompts import TextPromptConfig, TextPrompts


def synthetic_batch(images: int, masks: int, size: int, embed_dim: int) -> SamBatch:
    """`images` images with `masks` square masks each (all above the size threshold)."""
    per = -(-masks // images)
    m = torch.zeros(images, per, size, size, dtype=torch.bool)
    boxes = torch.zeros(images, per, 4)
    for i in range(per):
        x0 = (i * 37) % (size // 2)
        m[:, i, x0 : x0 + size // 3, x0 : x0 + size // 4] = True
        boxes[:, i] = torch.tensor([x0, x0, x0 + size // 4, x0 + size // 3])
    return SamBatch(
        images=torch.randn(images, 3, size, size),
        masks=m,
        mask_valid=torch.ones(images, per, dtype=torch.bool),
        boxes=boxes,
        category_ids=torch.zeros(images, per, dtype=torch.long),
        categories=[[f"thing {i}" for i in range(per)]] * images,
        image_hw=torch.full((images, 2), size),
        region_embeds=torch.nn.functional.normalize(torch.randn(images, per, embed_dim), dim=-1),
    )


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return sorted(out)[len(out) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", default="ViT-B-32")
    p.add_argument("--masks", type=int, default=16, help="large-enough masks per step")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--size", type=int, default=1024, help="model input side")
    p.add_argument("--phrases", type=int, default=16, help="distinct category phrases per step")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    device = torch.device(a.device)
    cfg = TextPromptConfig(enabled=True, clip=a.clip, pretrained=None, min_region_area=1)
    enc = ClipPromptEncoder.load(a.clip, None).to(device)
    text = TextPrompts(enc, cfg)
    batch = synthetic_batch(a.images, a.masks, a.size, enc.embed_dim).to(device)
    targets = select_masks(batch, 64, 1.0, 1)
    fly = SamBatch(**{**vars(batch), "region_embeds": None})
    phrases = [f"a photo of a thing {i}." for i in range(a.phrases)]
    with torch.no_grad():
        res = {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "clip": a.clip,
            "masks": targets.num_masks,
            "images": a.images,
            "size": a.size,
            "region_on_the_fly_s": timed(lambda: text.regions(fly, targets), a.repeats, device),
            "region_precomputed_s": timed(lambda: text.regions(batch, targets), a.repeats, device),
            "text_tower_uncached_s": timed(lambda: enc.encode_text(phrases), a.repeats, device),
        }
    res["on_the_fly_ms_per_mask"] = 1000 * res["region_on_the_fly_s"] / max(res["masks"], 1)
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
