"""Teacher-student steps against the stages they extend, interleaved in one process.

    python benchmarks/bench_teacher.py [--teacher b] [--reps 5] [--threads 1] [--json out.json]

One step = forward (loss), backward, AdamW step, fp32, on the CPU, with the production code
(`SamiModel`, `SamTeacher`, `interactive_loss`). Two comparisons:

1. stage 1: an MAE step against a SAMI step of the same student (mae_vit_tiny: width 192,
   depth 12, decoder 128 x 2, 224 px, batch 8), the SAMI step with the teacher's forward
   (on the fly, the default) and with teacher features given (precomputed);
2. stage 2: a `stage=sam` step (sam_vit_tiny at 256 px, batch 2, 16 masks per image, the
   default 11 prompting rounds) against a distillation step of the same student (embedding
   regression, with the teacher's forward and with precomputed embeddings) and a
   decoder-phase distillation step (embedding regression + the same prompting rounds).

The teacher is a randomly initialised `sam_vit_<teacher>` at 256 px (a 16 x 16 grid: the
student's); its cost, not its weights, is what is timed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks.common import THREADS_HELP, interleaved, machine, median, spread
from sam_train.models.mae import MaskedAutoencoder
from sam_train.models.sam.sam import build_sam_vit
from sam_train.models.sami import SamiModel
from sam_train.models.teacher import SamTeacher
from sam_train.training.interactive import InteractiveConfig, interactive_loss
from sam_train.training.prompts import PromptTargets

MAE_TINY = dict(
    img_size=224,
    patch_size=16,
    embed_dim=192,
    depth=12,
    num_heads=3,
    decoder_embed_dim=128,
    decoder_depth=2,
    decoder_num_heads=4,
    norm_pix_loss=True,
)


def _stepper(model: torch.nn.Module, loss_fn):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    return step


def stage1_steps(teacher: SamTeacher, batch: int) -> dict:
    torch.manual_seed(0)
    images = torch.randn(batch, 3, 224, 224)
    noise = torch.rand(batch, 196)
    mae = MaskedAutoencoder(**MAE_TINY)
    sami = SamiModel(target_dim=teacher.feature_dim, **MAE_TINY)
    sami.encoder.load_state_dict(mae.encoder.state_dict())
    features = teacher.features(images)
    return {
        "mae": _stepper(mae, lambda: mae(images, noise=noise)[0]),
        "sami_teacher_on_the_fly": _stepper(
            sami, lambda: sami(images, teacher.features(images), noise=noise)[0]
        ),
        "sami_precomputed": _stepper(sami, lambda: sami(images, features, noise=noise)[0]),
    }


def synthetic_targets(batch: int, masks: int, size: int) -> PromptTargets:
    """`masks` random rectangles per image (a stage-2 step's targets)."""
    gen = torch.Generator().manual_seed(0)
    k = batch * masks
    xy = torch.randint(0, size // 2, (k, 2), generator=gen)
    wh = torch.randint(size // 8, size // 2, (k, 2), generator=gen)
    m = torch.zeros(k, size, size, dtype=torch.bool)
    for i in range(k):
        x, y = xy[i].tolist()
        w, h = wh[i].tolist()
        m[i, y : y + h, x : x + w] = True
    boxes = torch.cat([xy, xy + wh], 1).float()
    index = torch.arange(batch).repeat_interleave(masks)
    return PromptTargets(m, boxes, index, torch.full((k, 2), size), torch.arange(k) % masks)


def stage2_steps(teacher: SamTeacher, batch: int, masks: int) -> dict:
    torch.manual_seed(0)
    images = torch.randn(batch, 3, 256, 256)
    targets = synthetic_targets(batch, masks, 256)
    cfg = InteractiveConfig()  # 8 click rounds + 2 mask-only rounds after the first prompt
    sam = build_sam_vit("tiny", image_size=256)
    embeds = teacher.embeddings(images)

    def sam_loss():
        gen = torch.Generator().manual_seed(0)
        emb = sam.embed_images(images)
        return interactive_loss(sam, emb, targets, cfg, gen).losses["loss"]

    def distill_loss(target_fn):
        return lambda: F.mse_loss(sam.embed_images(images), target_fn())

    def distill_with_decoder():
        gen = torch.Generator().manual_seed(0)
        emb = sam.embed_images(images)
        loss = F.mse_loss(emb, teacher.embeddings(images))
        return loss + interactive_loss(sam, emb, targets, cfg, gen).losses["loss"]

    return {
        "sam_stage2": _stepper(sam, sam_loss),
        "distill_teacher_on_the_fly": _stepper(
            sam, distill_loss(lambda: teacher.embeddings(images))
        ),
        "distill_precomputed": _stepper(sam, distill_loss(lambda: embeds)),
        "distill_decoder_phase": _stepper(sam, distill_with_decoder),
    }


def report(name: str, times: dict[str, list[float]], base: str) -> dict:
    med = {k: median(v) for k, v in times.items()}
    out = {
        "step_s": med,
        "spread": {k: spread(v) for k, v in times.items()},
        f"ratio_over_{base}": {k: med[k] / med[base] for k in med},
    }
    for k in med:
        print(
            f"{name}: {k:<28} {med[k]:.3f} s/step  ({med[k] / med[base]:.2f}x {base}, "
            f"spread {out['spread'][k]:.0%})",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="b", help="teacher size: tiny, b, l, h (256 px)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--stage1-batch", type=int, default=8)
    parser.add_argument("--stage2-batch", type=int, default=2)
    parser.add_argument("--masks", type=int, default=16, help="masks per image in stage 2")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--only", choices=["stage1", "stage2"], help="one comparison only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = SamTeacher(build_sam_vit(args.teacher, image_size=256))
    results = {"machine": machine(), "teacher": f"sam_vit_{args.teacher} @ 256", "reps": args.reps}
    if args.only != "stage2":
        steps = stage1_steps(teacher, args.stage1_batch)
        results["stage1"] = report("stage 1", interleaved(steps, args.reps, args.warmup), "mae")
    if args.only != "stage1":
        steps = stage2_steps(teacher, args.stage2_batch, args.masks)
        results["stage2"] = report(
            "stage 2", interleaved(steps, args.reps, args.warmup), "sam_stage2"
        )
    results["machine_after"] = machine()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
