"""Text prompts: loading CLIP through open_clip, its errors, region crops."""

from __future__ import annotations

import pytest
import torch
from text_helpers import tiny_clip_files

from sam_train.models.sam.text import ClipLoadError, ClipPromptEncoder, load_open_clip, region_crops


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    return tiny_clip_files(tmp_path_factory.mktemp("clip"))


def test_loading_by_local_path_gives_identical_embeddings(clip_files) -> None:
    import open_clip

    cfg, ckpt = clip_files
    reference = open_clip.create_model("tiny-clip-test", pretrained=None)
    reference.load_state_dict(torch.load(ckpt, weights_only=True))
    reference.eval()
    enc = ClipPromptEncoder.load(cfg, ckpt)
    tokens = open_clip.get_tokenizer("tiny-clip-test")(["a dog", "a photo of a chair."])
    with torch.no_grad():
        want = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1)
        got = enc.encode_text(["a dog", "a photo of a chair."])
    assert torch.allclose(got, want, atol=1e-6)
    crops = torch.rand(3, 3, 32, 32)
    mean, std = enc.clip_mean, enc.clip_std
    with torch.no_grad():
        want = torch.nn.functional.normalize(reference.encode_image((crops - mean) / std), dim=-1)
        got = enc.encode_crops(crops)
    assert torch.allclose(got, want, atol=1e-6)
    assert enc.embed_dim == 24 and not any(p.requires_grad for p in enc.parameters())


def test_unknown_model_name_says_how_to_list_names() -> None:
    with pytest.raises(ClipLoadError, match=r"unknown open_clip model 'ViT-Q-99'.*list_models"):
        load_open_clip("ViT-Q-99", None)


def test_tag_not_available_offline_names_the_local_path_option(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipLoadError, match=r"not available here.*prompt\.text\.pretrained=/path"):
        load_open_clip("ViT-B-32", "laion2b_s34b_b79k", cache_dir="/nonexistent-cache")


def test_unknown_tag_lists_the_tags_of_the_model() -> None:
    with pytest.raises(ClipLoadError, match=r"neither a file nor a pretrained tag.*openai"):
        load_open_clip("ViT-B-32", "no-such-tag")


def test_region_crop_is_the_box_enlarged_with_the_background_dimmed() -> None:
    images = torch.zeros(1, 3, 64, 64)  # normalised zeros = the ImageNet mean colour
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 16:48, 16:48] = True
    boxes = torch.tensor([[16.0, 16.0, 48.0, 48.0]])
    crop = region_crops(images, masks, boxes, torch.tensor([0]), 32, margin=1.0, background=0.5)
    # margin 1: the crop spans 64 px centred on the box, so the mask is the central half
    mean = torch.tensor([0.485, 0.456, 0.406])
    assert torch.allclose(crop[0, :, 16, 16], mean, atol=1e-4)  # inside: untouched
    assert torch.allclose(crop[0, :, 2, 2], mean * 0.5, atol=1e-4)  # outside: dimmed


def test_config_with_text_enabled_builds_the_module_with_clip(clip_files, tmp_path) -> None:
    from conftest import SAM_TINY
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg_path, ckpt = clip_files
    overrides = [
        "stage=sam",
        *SAM_TINY,
        "prompt.text.enabled=true",
        "model.text_embed_dim=24",
        f"prompt.text.clip={cfg_path}",
        f"prompt.text.pretrained={ckpt}",
        f"paths.run_dir={tmp_path}",
    ]
    with initialize_config_module("sam_train.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert cfg.stage.module.interactive.text_prob == cfg.prompt.text.prob > 0
    make = instantiate(cfg.stage.module, _partial_=True)
    module = make(
        model=instantiate(cfg.model),
        optim=instantiate(cfg.optim),
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    assert module.clip_encoder.embed_dim == 24 and module.text_cfg.min_region_area == 10000
    with initialize_config_module("sam_train.conf", version_base="1.3"):
        off = compose("train", overrides=["stage=sam", f"paths.run_dir={tmp_path}"])
    assert off.prompt.text.enabled is False
