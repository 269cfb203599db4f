"""The production stage-2 step with `checkpoint_rounds` on and off, side by side.

    python benchmarks/bench_interactive.py                      # the demo's step (demo_sam)
    python benchmarks/bench_interactive.py --config stage=sam   # SAM's 64 masks x 11 rounds
    python benchmarks/bench_interactive.py --reps 7 --threads 1 --json out.json

The step is `SamModule.training_step`'s model work, built from the composed config: the image
embedded once (with gradients only when the encoder trains), `interactive_loss` (the real
prompting loop, losses and rounds of `stage.module.interactive`), backward, AdamW step. Masks
are synthetic rectangles, `stage.module.max_masks_per_image` per image; the prompts are drawn
from the same seed for both contenders, so both run the same work. Times come from
interleaved repetitions in one process; peak step memory from torch's CPU allocator.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common


def compose_step_config(overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module("sam_train.conf", version_base="1.3"):
        return compose("train", overrides=[*overrides, "paths.run_dir=/tmp/bench_interactive"])


def synthetic_targets(images: int, masks: int, size: int):
    """`masks` rectangles per image, at different places and sizes: PromptTargets of K masks."""
    from sam_train.training.prompts import PromptTargets

    k = images * masks
    gt = torch.zeros(k, size, size, dtype=torch.bool)
    boxes = torch.zeros(k, 4)
    for i in range(k):
        y, x = (i * 37) % (size // 2), (i * 53) % (size // 2)
        h, w = size // 8 + (i * 11) % (size // 4), size // 8 + (i * 17) % (size // 4)
        gt[i, y : y + h, x : x + w] = True
        boxes[i] = torch.tensor([x, y, x + w, y + h], dtype=torch.float)
    image_index = torch.arange(images).repeat_interleave(masks)
    return PromptTargets(masks=gt, boxes=boxes, image_index=image_index)


def make_step(cfg, checkpoint_rounds: bool):
    """One training step of the composed stage-2 config, `checkpoint_rounds` set as given."""
    from hydra.utils import instantiate

    from sam_train.training.interactive import interactive_loss

    torch.manual_seed(0)
    sam = instantiate(cfg.model).train()
    interactive = instantiate(cfg.stage.module.interactive, checkpoint_rounds=checkpoint_rounds)
    b, size = cfg.data.batch_size, cfg.model.image_size
    images = torch.randn(b, 3, size, size)
    targets = synthetic_targets(b, cfg.stage.module.max_masks_per_image, size)
    params = [p for p in sam.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    encoder_trains = any(p.requires_grad for p in sam.image_encoder.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(encoder_trains):
            embeddings = sam.embed_images(images)
        gen = torch.Generator().manual_seed(0)  # the same prompts for both contenders
        result = interactive_loss(sam, embeddings, targets, interactive, gen)
        result.losses["loss"].backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        nargs="*",
        default=["experiment=demo_sam"],
        help="sam-train overrides composing the step (default: the demo's stage 2)",
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help=common.THREADS_HELP)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    common.quiet_profiler_logs()
    cfg = compose_step_config(args.config)
    steps = {"rounds_held": make_step(cfg, False), "rounds_recomputed": make_step(cfg, True)}
    times = common.interleaved(steps, reps=args.reps, warmup=1)
    memory = {name: common.peak_cpu_bytes(fn) for name, fn in steps.items()}
    held, recomputed = (common.median(times[n]) for n in steps)
    result = {
        "machine": common.machine(),
        "config": args.config,
        "threads": args.threads,
        "reps": args.reps,
        "masks": cfg.data.batch_size * cfg.stage.module.max_masks_per_image,
        "rounds": 1
        + cfg.stage.module.interactive.num_click_rounds
        + cfg.stage.module.interactive.num_mask_only_rounds,
        "step_s": {n: common.median(times[n]) for n in steps},
        "spread": {n: common.spread(times[n]) for n in steps},
        "time_ratio_recomputed_over_held": recomputed / held,
        "peak_step_bytes": memory,
        "memory_ratio_recomputed_over_held": memory["rounds_recomputed"] / memory["rounds_held"],
    }
    print(f"{' '.join(args.config)}: {result['masks']} masks x {result['rounds']} rounds")
    for name, setting in (("rounds_held", "false"), ("rounds_recomputed", "true")):
        seconds, spread, peak = result["step_s"][name], result["spread"][name], memory[name]
        peak_text = common.fmt_si(peak, "B")
        print(f"  checkpoint_rounds={setting}: {seconds:.3f} s/step ({spread:.0%}), {peak_text}")
    ratios = (
        result["time_ratio_recomputed_over_held"],
        result["memory_ratio_recomputed_over_held"],
    )
    print("  true / false: {:.2f}x time, {:.2f}x peak step memory".format(*ratios), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
