"""Shared test set-up: offline hubs, few threads, tiny models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Under pytest-xdist (`make test`: one worker per core) each worker, and each console script it
# starts, computes on one thread: more would only fight the other workers for the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from sam_train.models.mae import MaskedAutoencoder  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Console scripts and `python -c` children started by tests import this tree's code (and the
# test helpers), whichever checkout the venv was installed from: PYTHONPATH precedes the
# editable install's finder. A test that sets its own PYTHONPATH builds on `tree_pythonpath`.
TREE_PYTHONPATH = os.pathsep.join([str(REPO), str(REPO / "tests")])
os.environ["PYTHONPATH"] = os.pathsep.join(
    [TREE_PYTHONPATH, *filter(None, [os.environ.get("PYTHONPATH")])]
)


def tree_pythonpath(*extra: Path | str) -> str:
    """PYTHONPATH for a child process: this tree first, then the given folders."""
    return os.pathsep.join([TREE_PYTHONPATH, *map(str, extra)])


def pytest_collection_modifyitems(config, items):
    """`long` tests (minutes of training to show a learning claim) run only when asked."""
    if os.environ.get("SAM_TRAIN_LONG_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="long: set SAM_TRAIN_LONG_TESTS=1 (make test-long)")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def console_script(name: str) -> str:
    """Path of an installed console script of this environment."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"console script {name} is not installed in {BIN}; run `make install`")
    return str(path)


def tiny_mae(**overrides) -> MaskedAutoencoder:
    kwargs = dict(
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=4,
    )
    kwargs.update(overrides)
    return MaskedAutoencoder(**kwargs)


def tiny_sam_arch(width: int = 32) -> dict:
    """`build_sam` arguments of a two-block SAM `width` channels wide at 64 px."""
    return dict(
        encoder_embed_dim=width,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size=64,
        window_size=2,
        prompt_embed_dim=width,
        decoder_mlp_dim=2 * width,
        decoder_num_heads=4,
        iou_head_hidden_dim=width,
    )


def tiny_sam(width: int = 32, seed: int | None = 0, **overrides):
    """A two-block SAM `width` channels wide (64 px input unless overridden); seeded with
    `seed` (None: the caller's random state)."""
    from sam_train.models.sam import build_sam

    kwargs = {**tiny_sam_arch(width), **overrides}
    if seed is not None:
        torch.manual_seed(seed)
    return build_sam(**kwargs)


def fit_interactive(sam, batch, cfg, steps: int, warmup: int, seed: int, lr: float = 4e-3):
    """Train `sam` on one fixed `batch` with the interactive loss: AdamW, linear warm-up then
    cosine decay per step, gradients clipped to 1 (the tests' short stage-2 recipe)."""
    import math

    from sam_train.training import interactive_loss, select_masks

    opt = torch.optim.AdamW(sam.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        targets = select_masks(batch, min_area=4, generator=gen)
        result = interactive_loss(sam, sam.embed_images(batch.images), targets, cfg, gen)
        opt.zero_grad(set_to_none=True)
        result.losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        sched.step()
    return sam.eval()


@pytest.fixture
def mae() -> MaskedAutoencoder:
    torch.manual_seed(0)
    return tiny_mae()


def cpu_trainer(**kwargs):
    """A Lightning Trainer on the CPU without logger, checkpoints, progress bar or summary
    (each can be turned back on through `kwargs`)."""
    import lightning as L

    quiet = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**quiet, **kwargs})


def train_stage1_checkpoint(path: Path, mae: MaskedAutoencoder, steps: int, run_config=None):
    """Fit `mae` for a few steps on random 32 px images and save a real Lightning checkpoint."""
    import lightning as L
    from torch.utils.data import DataLoader

    from sam_train.lit.mae_module import MaeModule
    from sam_train.lit.optim import OptimConfig

    class Images(L.LightningDataModule):
        batch_size = 2

        def train_dataloader(self):
            return DataLoader(torch.randn(4, 3, 32, 32), batch_size=2)

    module = MaeModule(mae, OptimConfig(lr=1e-3), run_config=run_config)
    trainer = cpu_trainer(max_steps=steps)
    trainer.fit(module, datamodule=Images())
    trainer.save_checkpoint(path)
    return path
