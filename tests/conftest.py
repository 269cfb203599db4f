"""Shared test set-up: offline hubs, one thread per xdist worker, tiny models and their
sam-train overrides, and the ways to run a tool (a child process, its `main`, a training run
in this process). Tests import these from here, never from another test module."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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
    """`long` tests (minutes of training to show a learning claim) run only when asked; files
    run heaviest first."""
    if os.environ.get("SAM_TRAIN_LONG_TESTS") != "1":
        skip = pytest.mark.skip(reason="long: set SAM_TRAIN_LONG_TESTS=1 (make test-long)")
        for item in items:
            if "long" in item.keywords:
                item.add_marker(skip)
    heaviest_files_first(items)


# seconds each test file took in a recorded `make test` (make test-durations); only the order
# of the files depends on it
DURATIONS = Path(__file__).with_name("durations.json")


def heaviest_files_first(items: list) -> None:
    """Order test files by their recorded seconds, longest first (a file not recorded counts as
    the median). `make test` hands whole files to the xdist workers in this order
    (`--dist loadfile --no-loadscope-reorder`), so the long files start early instead of one
    worker finishing alone on one of them. The order within a file is kept."""
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    known = sorted(seconds.values())
    default = known[len(known) // 2] if known else 0.0
    items.sort(key=lambda item: -seconds.get(item.path.name, default))  # stable sort


_file_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report) -> None:
    """With SAM_TRAIN_RECORD_DURATIONS=1: add up each file's setup, call and teardown time."""
    if os.environ.get("SAM_TRAIN_RECORD_DURATIONS") == "1":
        name = Path(report.nodeid.split("::")[0]).name
        _file_seconds[name] = _file_seconds.get(name, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus) -> None:
    """With SAM_TRAIN_RECORD_DURATIONS=1, after a passing run (in the xdist controller, which
    receives every worker's reports): the files that ran get their seconds in
    tests/durations.json, the others keep theirs."""
    if not _file_seconds or exitstatus != 0 or hasattr(session.config, "workerinput"):
        return
    record_durations(_file_seconds)


def record_durations(file_seconds: dict[str, float]) -> None:
    recorded = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    recorded |= {name: round(s, 1) for name, s in file_seconds.items()}
    ordered = dict(sorted(recorded.items(), key=lambda kv: -kv[1]))
    tmp = DURATIONS.with_suffix(".tmp")
    tmp.write_text(json.dumps(ordered, indent=1) + "\n")
    tmp.replace(DURATIONS)


def console_script(name: str) -> str:
    """Path of an installed console script of this environment."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"console script {name} is not installed in {BIN}; run `make install`")
    return str(path)


def run_cli(
    name: str,
    *args: object,
    cwd: Path | str | None = None,
    env: dict | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """The console script `name` run as a user runs it, in a child process: `.returncode`,
    `.stdout`, `.stderr`. `env` adds to this process's environment (PYTHONPATH: this tree)."""
    return subprocess.run(
        [console_script(name), *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def compose_train(overrides: list[str], run_dir: Path | str, hydra: bool = False):
    """`sam-train OVERRIDES` composed as Hydra composes it, the run folder set to `run_dir`: the
    job config `train()` receives, or with `hydra=True` the whole config (its `hydra` node holds
    the `runtime.choices` the stage-pairing check reads)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("sam_train.conf", version_base="1.3"):
        cfg = compose(
            "train", overrides=[*overrides, f"paths.run_dir={run_dir}"], return_hydra_config=True
        )
    return cfg if hydra else OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def train_in_process(overrides: list[str], run_dir: Path | str) -> float | None:
    """What `sam-train OVERRIDES hydra.run.dir=RUN_DIR` runs once Hydra has composed the config
    (checks, data, model, fit, exports), in this process: no interpreter start, no Hydra job
    set-up (the run's `.hydra/` folder, its log). Returns the optimised metric; a user error
    raises (the console script's one-line exit 2 is the smoke tests' business)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from sam_train.cli.train import train

    cfg = compose_train(overrides, run_dir, hydra=True)
    HydraConfig.instance().set_config(cfg)
    try:
        return train(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    finally:
        HydraConfig.instance().cfg = None


@contextlib.contextmanager
def run_output():
    """What code run in the block prints, and what sam_train logs at INFO (the lines a
    `sam-train` console shows), as one growing text: `with run_output() as out: ...;
    out.getvalue()`."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("sam_train")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out):
            yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def call_main(main, argv: list, capfd=None) -> SimpleNamespace:
    """A tool's `main(argv)` in this process: `.returncode` and what it printed (`.stdout`,
    `.stderr`), as `run_cli` gives them for the console script. Without pytest's `capfd` (in a
    module-scoped fixture) Python-level output is captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if capfd is None:
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(err))
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
    printed, errors = capfd.readouterr() if capfd is not None else (out.getvalue(), err.getvalue())
    return SimpleNamespace(returncode=code, stdout=printed, stderr=errors)


def sam_train_main(argv: list[str]) -> int:
    """`sam-train ARGV` through its console entry (Hydra's `main`, run folder, exit 2 on a user
    error) in this process; for `call_main`."""
    from sam_train.cli import train as train_cli

    saved, sys.argv = sys.argv, ["sam-train", *argv]
    try:
        train_cli.main()
    finally:
        sys.argv = saved
    return 0


def assert_one_line_error(res, tool: str, *fragments: str) -> str:
    """`res` (from `run_cli` or `call_main`) is exit 2 with one `TOOL: error: ...` line naming
    every fragment, and no traceback."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith(f"{tool}: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    assert "weights_only" not in line  # torch's advice to unpickle code is not repeated
    return line


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


def tiny_overrides(arch: dict) -> list[str]:
    """`model.KEY=VALUE` overrides of a config's model that build `arch`."""
    return [
        f"model.{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "")
        for k, v in arch.items()
    ]


# sam-train overrides of a few seconds' run of each stage on the sample photos: the tiny models
# above (MAE: 32 px images, 8 px patches, width 32; SAM: tiny_sam_arch()), a few samples, 1 epoch
MAE_TINY = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_embed_dim=32",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "data.batch_size=4",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar.refresh_rate=0",
]
SAM_TINY = [
    *tiny_overrides(tiny_sam_arch()),
    "stage.module.max_masks_per_image=4",
    "stage.module.val_max_masks=4",
    "stage.module.val_max_clicks=3",
    "stage.module.interactive.num_click_rounds=2",
    "data.samples_per_epoch=4",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar.refresh_rate=0",
    "optim.lr=1e-3",
]
SAMI_TINY = [
    "stage=sami",
    *MAE_TINY,
    "data.samples_per_epoch=8",
    "data.val_photos=[chelsea]",
    "trainer.max_epochs=1",
]
DISTILL_TINY = [
    "stage=distill",
    # the student is a SAM image encoder (the teacher's prompt encoder and decoder are reused)
    "model.encoder_embed_dim=16",
    "model.encoder_depth=2",
    "model.encoder_num_heads=2",
    "model.encoder_global_attn_indexes=[1]",
    "model.image_size=32",
    "model.patch_size=8",
    "model.window_size=2",
    "stage.module.max_masks_per_image=4",
    "stage.module.val_max_masks=4",
    "stage.module.val_max_clicks=2",
    "stage.module.interactive.num_click_rounds=1",
    "stage.module.interactive.checkpoint_rounds=false",
    "data.samples_per_epoch=4",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar.refresh_rate=0",
]


def tiny_sam(width: int = 32, seed: int | None = 0, **overrides):
    """A two-block SAM `width` channels wide (64 px input unless overridden); seeded with
    `seed` (None: the caller's random state)."""
    from sam_train.models.sam import build_sam

    kwargs = {**tiny_sam_arch(width), **overrides}
    if seed is not None:
        torch.manual_seed(seed)
    return build_sam(**kwargs)


def randomise(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """`module` with small random values added to every parameter, in place: zero-initialised
    tables (LoRA's B, SAM's no-mask embedding) would hide mistakes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module


def write_official_base(path: Path, **overrides):
    """A tiny SAM with non-trivial weights, saved in the official segment-anything layout."""
    from sam_train.weights.keymaps import sam_state_to_official

    sam = randomise(tiny_sam(**overrides))
    torch.save(sam_state_to_official(sam.state_dict()), path)
    return sam


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
def one_thread():
    """Torch on one thread for the test: tiny ops run fastest so, and a busy machine does not
    stall OpenMP barriers (under xdist every worker is on one thread already)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
