"""Every option of every config group composes with the stage it belongs to and builds (a tiny
version of each model); an option of the other stage is refused before anything is built,
with a message naming both keys."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from conftest import compose_train
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sam_train.config_checks import ConfigError, check_stage_pairing
from sam_train.models.mae import MaskedAutoencoder
from sam_train.models.sam.sam import Sam

CONF = Path(__file__).resolve().parents[1] / "conf"
STAGES = ("mae", "sam")
# shrink any model to a few layers at a small input: the architecture keys stay the option's
TINY = {
    "mae": ["model.img_size=32", "model.depth=1", "model.decoder_depth=1"],
    "sam": [
        "model.image_size=64",
        "model.encoder_depth=1",
        "model.encoder_global_attn_indexes=[0]",
    ],
}
# released checkpoints' names, which do not start with their stage; TinyViT sizes to shrink
MODEL_STAGE = {"lite_medsam": "sam", "mobile_sam": "sam"}
TINY_OF_MODEL = {
    name: [
        "model.image_size=64",
        "model.depths=[1,1,1,1]",
        "model.embed_dims=[8,16,16,32]",
        "model.num_heads=[1,1,1,2]",
    ]
    for name in MODEL_STAGE
}
BUILDS = {"mae": MaskedAutoencoder, "sam": Sam}
# the stage of each option of a stage-specific group (a model's is its name's prefix)
STAGE_OF = {
    "data": {
        "sample": "mae",
        "images": "mae",
        "shards_mae": "mae",
        "mix_mae": "mae",
        "sam_sample": "sam",
        "shards_sam": "sam",
        "coco": "sam",  # the old name of shards_sam
        "sa1b": "sam",
        "mix": "sam",
    },
    "experiment": {
        "demo_mae": "mae",
        "demo_sam": "sam",
        "mae_vit_base_paper": "mae",
        "sam_vit_b_sa1b": "sam",
        "sam_vit_h_sa1b": "sam",
    },
    "hparams_search": {"mae_optuna": "mae", "sam_optuna": "sam"},
}


def options(group: str) -> list[str]:
    """The options `group=...` takes (files starting with '_' are shared bases)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def stage_of(group: str, option: str) -> str:
    if group == "model":
        return MODEL_STAGE.get(option, option.split("_")[0])
    return STAGE_OF[group][option]


def test_every_stage_specific_option_is_listed_here():
    for group, listed in STAGE_OF.items():
        assert sorted(listed) == options(group), f"new {group} option: say its stage above"
    for option in options("model"):
        assert stage_of("model", option) in STAGES, option


@pytest.mark.parametrize("option", options("model"))
def test_each_model_builds_tiny_with_its_stage(option, tmp_path):
    stage = stage_of("model", option)
    tiny = TINY_OF_MODEL.get(option, TINY[stage])
    cfg = compose_train([f"stage={stage}", f"model={option}", *tiny], tmp_path, hydra=True)
    check_stage_pairing(cfg, cfg.hydra.runtime.choices)
    model = instantiate(cfg.model)
    assert isinstance(model, BUILDS[stage])
    optim = instantiate(cfg.optim)
    module = instantiate(cfg.stage.module, model=model, optim=optim, run_config=None)
    assert isinstance(module, L.LightningModule) and module.model is model


def mixture_sources(root: Path, masks: bool) -> str:
    """`data.sources=...` over two tiny shard folders (with masks for stage 2)."""
    from prep_helpers import image_folder, make_coco

    from data_prep.coco import convert_coco
    from data_prep.images import convert_images
    from data_prep.shard_writer import ShardOptions

    for name in ("a", "b"):
        if masks:
            convert_coco(
                *make_coco(root / f"{name}_src"), root / name, ShardOptions(progress=False)
            )
        else:
            convert_images(image_folder(root / f"{name}_src", 2), root / name, ShardOptions())
    return (
        f"data.sources=[{{path: {root / 'a'}, weight: 0.7}},"
        f" {{path: {root / 'b'}, weight: 0.3, val_path: {root / 'b'}}}]"
    )


@pytest.mark.parametrize("option", options("data"))
def test_each_data_config_builds_with_its_stage(option, tmp_path):
    stage = stage_of("data", option)
    extra = {"images": [f"data.root={tmp_path}"]}.get(option, [])
    if option == "images":
        from PIL import Image

        for i in range(2):
            Image.new("RGB", (40, 30), (i * 90, 20, 20)).save(tmp_path / f"{i}.tif")
    if option in ("shards_mae", "shards_sam", "coco", "sa1b"):
        extra = [f"data.path={tmp_path}"]
    if option in ("mix", "mix_mae"):  # two sources, written as on a command line
        extra = [mixture_sources(tmp_path, masks=option == "mix")]
    cfg = compose_train([f"stage={stage}", f"data={option}", *extra], tmp_path, hydra=True)
    check_stage_pairing(cfg, cfg.hydra.runtime.choices)
    dm = instantiate(cfg.data)
    assert isinstance(dm, L.LightningDataModule)
    assert dm.feeds_stage == stage
    assert cfg.data.img_size == (cfg.model.img_size if stage == "mae" else cfg.model.image_size)
    assert cfg.data.seed == cfg.seed


@pytest.mark.parametrize("option", options("experiment"))
def test_each_experiment_selects_its_stage_and_builds(option, tmp_path):
    stage = stage_of("experiment", option)
    data = ["data.path=/shards"] if "sa1b" in option else []
    cfg = compose_train([f"experiment={option}", *data], tmp_path, hydra=True)  # no stage= needed
    assert cfg.stage.name == stage
    check_stage_pairing(cfg, cfg.hydra.runtime.choices)
    tiny = [] if option.startswith("demo") else TINY[stage]
    cfg = compose_train([f"experiment={option}", *data, *tiny], tmp_path, hydra=True)
    assert isinstance(instantiate(cfg.model), BUILDS[stage])
    instantiate(cfg.optim)


def test_the_vit_h_recipe_is_the_vit_b_recipe_with_another_encoder(tmp_path):
    b = compose_train(["experiment=sam_vit_b_sa1b", "data.path=x"], tmp_path, hydra=True)
    h = compose_train(["experiment=sam_vit_h_sa1b", "data.path=x"], tmp_path, hydra=True)
    assert (h.model.encoder_embed_dim, h.model.drop_path_rate) == (1280, 0.4)
    for key in ("optim", "trainer", "data"):
        assert OmegaConf.to_container(b[key]) == OmegaConf.to_container(h[key]), key
    # the paper's lr 8e-4 at batch 256 (1 image x 8 GPUs x 32 nodes) from optim=sam's base_lr
    batch = b.data.batch_size * b.trainer.devices * b.trainer.num_nodes
    assert b.optim.base_lr * batch / 256 == pytest.approx(8e-4)


def test_the_search_selects_stage_mae_and_its_parameters_exist(tmp_path):
    cfg = compose_train(["hparams_search=mae_optuna"], tmp_path, hydra=True)
    assert cfg.stage.name == "mae"
    check_stage_pairing(cfg, cfg.hydra.runtime.choices)
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key


@pytest.mark.parametrize("option", options("trainer"))
def test_each_trainer_composes_and_the_cpu_ones_build(option, tmp_path):
    cpu = {
        "cpu": [],
        "ddp": ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"],
    }
    cfg = compose_train([f"trainer={option}", *cpu.get(option, [])], tmp_path)
    assert cfg.trainer.use_distributed_sampler is False
    if option in cpu:
        trainer = instantiate(cfg.trainer, logger=False)
        assert isinstance(trainer, L.Trainer)


@pytest.mark.parametrize("option", options("logger"))
def test_each_logger_builds(option, tmp_path):
    cfg = compose_train([f"logger={option}", "paths.cache_dir=/tmp"], tmp_path)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    assert all(hasattr(lg, "log_metrics") for lg in loggers)
    assert bool(loggers) == (option != "none")


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_builds_its_callbacks_and_prompt_config(stage, tmp_path):
    cfg = compose_train([f"stage={stage}"], tmp_path)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    assert all(isinstance(c, L.Callback) for c in callbacks)
    assert instantiate(cfg.prompt.text).enabled is False


def test_code_defaults_are_the_config_defaults(tmp_path):
    """A default written once in the code is what a run gets, and can be overridden."""
    from sam_train.training.interactive import InteractiveConfig

    cfg = compose_train(
        ["stage=sam", "stage.module.interactive.num_click_rounds=6"], tmp_path, hydra=True
    )
    interactive = instantiate(cfg.stage.module.interactive)
    assert interactive.box_noise_frac == InteractiveConfig.box_noise_frac == 0.1
    assert interactive.num_click_rounds == 6
    cfg = compose_train(
        ["stage=sam", "data=coco", "data.path=x", "data.hflip=false"], tmp_path, hydra=True
    )
    assert cfg.data.min_mask_area == cfg.stage.module.min_mask_area  # one mask filter
    assert cfg.data.hflip is False


WRONG = [
    (stage, group, option)
    for stage in STAGES
    for group in ("model", "data", "experiment", "hparams_search")
    for option in options(group)
    if stage_of(group, option) != stage
]


@pytest.mark.parametrize("stage, group, option", WRONG)
def test_an_option_of_the_other_stage_is_refused_naming_both_keys(stage, group, option, tmp_path):
    extra = ["data.path=x"] if "sa1b" in option else []
    cfg = compose_train([f"stage={stage}", f"{group}={option}", *extra], tmp_path, hydra=True)
    with pytest.raises(ConfigError) as err:
        check_stage_pairing(cfg, cfg.hydra.runtime.choices)
    assert f"stage={stage}" in str(err.value) and f"{group}={option}" in str(err.value)


def test_train_refuses_a_wrong_pairing_before_building_anything(tmp_path, monkeypatch):
    import sam_train.cli.train as cli

    built = []
    monkeypatch.setattr("hydra.utils.instantiate", lambda *a, **k: built.append(a))
    cfg = compose_train(["stage=sam", "model=mae_vit_tiny"], tmp_path)
    with pytest.raises(ConfigError, match="MaskedAutoencoder"):
        cli.train(cfg)
    assert built == []


def test_the_cli_refuses_in_one_message_with_status_2(tmp_path, capfd):
    from conftest import call_main, sam_train_main

    args = ["stage=sam", "model=mae_vit_tiny", f"hydra.run.dir={tmp_path}"]
    res = call_main(sam_train_main, args, capfd)
    assert res.returncode == 2
    assert "stage=sam with model=mae_vit_tiny" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]  # one line
    assert res.stderr.startswith("sam-train: error: ")


CHECKED_NODES = ("data", "model", "optim", "stage.module", "trainer")


@pytest.mark.parametrize(
    "group, option",
    [(g, o) for g in ("model", "data", "experiment", "trainer", "optim") for o in options(g)],
)
def test_every_option_passes_the_argument_type_check(group, option, tmp_path):
    from sam_train.config_types import argument_type_problems

    stage = option if group == "optim" else "sam" if group == "trainer" else stage_of(group, option)
    cfg = compose_train([f"stage={stage}", f"{group}={option}"], tmp_path, hydra=True)
    for key in CHECKED_NODES:
        assert argument_type_problems(OmegaConf.select(cfg, key), key) == [], (group, option)


def test_every_stage_config_is_a_registered_stage_of_that_name(tmp_path):
    """A stage is one config file and one module: each conf/stage/X.yaml builds the module
    registered as X, and every registered stage has its config file."""
    from hydra.utils import get_class

    from sam_train.lit.base import registered_stages

    stages = registered_stages()
    assert sorted(stages) == options("stage") == ["distill", "mae", "sam", "sami"]
    assert {name: cls.level for name, cls in stages.items()} == {
        "mae": 1,
        "sami": 1,
        "sam": 2,
        "distill": 2,
    }
    assert stages["sami"].batch_stage == "mae" and stages["distill"].batch_stage == "sam"
    for name in stages:
        cfg = compose_train([f"stage={name}"], tmp_path, hydra=True)
        assert cfg.stage.name == name
        assert get_class(cfg.stage.module._target_) is stages[name], name


def test_the_committed_code_default_nodes_are_the_signatures(tmp_path):
    """`make configs` has been run: every node a config file names exists and equals what
    the target's signature gives now (a changed default or a new argument shows up here)."""
    from sam_train.config_defaults import GROUP, node_text, referenced_targets

    targets = referenced_targets(CONF)
    assert targets, "no config file names a code-default node"
    stale = [
        t
        for t in targets
        if not (CONF / GROUP / f"{t}.yaml").exists()
        or (CONF / GROUP / f"{t}.yaml").read_text() != node_text(t)
    ]
    unused = sorted({p.stem for p in (CONF / GROUP).glob("*.yaml")} - set(targets))
    assert not stale and not unused, f"run `make configs` (stale: {stale}, unused: {unused})"
