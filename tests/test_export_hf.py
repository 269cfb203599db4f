"""`sam-export --format hf` and reading transformers folders back: SamModel and ViTMAE load our
exports strictly and compute what we compute; their folders initialise our models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import call_main, randomise, tiny_mae, tiny_sam

from sam_train.cli import export as export_cli
from sam_train.weights.checkpoints import WeightsError, read_weights
from sam_train.weights.export import export
from sam_train.weights.init import init_sam_from
from sam_train.weights.safetensors_io import save_weights
from sam_train.weights.sam_loading import load_sam

transformers = pytest.importorskip("transformers")

POINTS = torch.tensor([[12.0, 20.0], [40.0, 5.0]])
LABELS = torch.tensor([1, 0])
BOX = torch.tensor([4.0, 6.0, 31.0, 22.0])


@pytest.fixture(scope="module")
def sam_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    sam = randomise(tiny_sam().eval())
    src = tmp / "sam.safetensors"
    save_weights(src, sam.state_dict(), {"architecture": sam.architecture})
    run = call_main(export_cli.main, [src, "--format", "hf", "--out", tmp / "hf_sam"])
    assert run.returncode == 0, run.stderr
    return sam, tmp / "hf_sam"


def hf_sam_outputs(model, images, points=None, labels=None, box=None, mask=None):
    kwargs = {}
    if points is not None:
        kwargs.update(input_points=points[None, None], input_labels=labels[None, None])
    if box is not None:
        kwargs.update(input_boxes=box[None, None])
    if mask is not None:
        kwargs.update(input_masks=mask)
    with torch.no_grad():
        out = model(pixel_values=images, multimask_output=True, **kwargs)
    return out.pred_masks[0, 0], out.iou_scores[0, 0]  # [3, 4h, 4w], [3]


def our_outputs(sam, images, points=None, labels=None, box=None, mask=None):
    with torch.no_grad():
        logits, iou = sam.decode(
            sam.embed_images(images),
            points=None if points is None else (points[None], labels[None]),
            boxes=None if box is None else box[None],
            mask_inputs=mask,
        )
    return logits[0], iou[0]


PROMPTS = {
    "points": dict(points=POINTS, labels=LABELS),
    "box": dict(box=BOX),
    "points+box": dict(points=POINTS, labels=LABELS, box=BOX),
    "point+mask input": dict(
        points=POINTS[:1], labels=LABELS[:1], mask=torch.randn(1, 1, 16, 16) * 3
    ),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_sam_model_loads_strictly_and_gives_our_masks(sam_folder, name):
    sam, folder = sam_folder
    model, info = transformers.SamModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    theirs, their_iou = hf_sam_outputs(model.eval(), images, **PROMPTS[name])
    mine, my_iou = our_outputs(sam, images, **PROMPTS[name])
    assert (theirs - mine).abs().max() < 1e-4 and (their_iou - my_iou).abs().max() < 1e-4
    decided = mine.abs() > 1e-4  # pixels whose side of the threshold 1e-4 of noise cannot flip
    assert torch.equal((theirs > 0)[decided], (mine > 0)[decided])


def test_sam_processor_loads_from_the_folder(sam_folder):
    _, folder = sam_folder
    processor = transformers.SamProcessor.from_pretrained(folder)
    assert processor.image_processor.size["longest_edge"] == 64


def test_our_hf_folder_initialises_our_sam_exactly(sam_folder):
    sam, folder = sam_folder
    fresh = build_like(sam)
    report = init_sam_from(fresh, folder)
    assert report.layout == "sam_train_sam" and not report.new and not report.ignored
    ref, got = sam.state_dict(), fresh.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def build_like(sam):
    from sam_train.models.sam.sam import build_sam

    fresh = build_sam(**sam.architecture)
    torch.nn.init.zeros_(fresh.mask_decoder.iou_token.weight)
    return fresh


def test_a_folder_saved_by_transformers_loads_into_our_predictor(sam_folder, tmp_path):
    _, folder = sam_folder
    torch.manual_seed(7)
    config = transformers.SamConfig.from_pretrained(folder)
    theirs = transformers.SamModel(config).eval()  # their own random init, their save
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "theirs")
    ours = load_sam(tmp_path / "theirs")
    images = torch.randn(1, 3, 64, 64)
    for prompt in PROMPTS.values():
        a, a_iou = hf_sam_outputs(theirs, images, **prompt)
        b, b_iou = our_outputs(ours, images, **prompt)
        assert (a - b).abs().max() < 1e-4 and (a_iou - b_iou).abs().max() < 1e-4


@pytest.fixture(scope="module")
def mae_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf_mae")
    torch.manual_seed(0)
    mae = tiny_mae().eval()
    src = tmp / "mae.safetensors"
    heads = {"config": {"model": {"num_heads": 4, "decoder_num_heads": 4}}}  # as training stores
    save_weights(src, mae.state_dict(), heads)
    return mae, export(src, "hf", tmp / "hf_mae")


def test_vitmae_loads_strictly_and_reconstructs_as_we_do(mae_folder):
    mae, folder = mae_folder
    model, info = transformers.ViTMAEForPreTraining.from_pretrained(
        folder, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        theirs = model.eval()(pixel_values=images, noise=noise)
        loss, pred, mask = mae(images, noise=noise)
    assert torch.equal(theirs.mask, mask)
    assert (theirs.logits - pred).abs().max() < 1e-5 and abs(theirs.loss - loss) < 1e-5

    encoder, info = transformers.ViTMAEModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"]  # the decoder's keys are the unused ones


def test_vitmae_round_trip_is_bit_identical(mae_folder, tmp_path):
    mae, folder = mae_folder
    back = read_weights(folder)
    assert back.layout == "sam_train_mae"
    ref = mae.state_dict()
    assert set(back.state_dict) == set(ref)
    assert all(torch.equal(ref[k], back.state_dict[k]) for k in ref)
    # and once more through transformers' own save of the encoder alone
    transformers.ViTMAEModel.from_pretrained(folder).save_pretrained(tmp_path / "vit")
    encoder = read_weights(tmp_path / "vit")
    assert encoder.layout == "vit"
    enc_ref = {k.removeprefix("encoder."): v for k, v in ref.items() if k.startswith("encoder.")}
    assert all(torch.equal(enc_ref[k], encoder.state_dict[k]) for k in enc_ref)


def test_a_vitmae_folder_initialises_a_sam_encoder(mae_folder):
    from conftest import tiny_sam

    mae, folder = mae_folder
    sam = tiny_sam(encoder_embed_dim=64, encoder_num_heads=4, image_size=64, patch_size=8)
    report = init_sam_from(sam, folder)
    blocks = [k for k in report.loaded if ".blocks." in k]
    assert len(blocks) == len([k for k in mae.state_dict() if k.startswith("encoder.blocks.")])
    assert torch.equal(
        sam.image_encoder.blocks[1].attn.qkv.weight, mae.encoder.blocks[1].attn.qkv.weight
    )


def test_exports_do_not_import_transformers_until_asked():
    code = (
        "import sys, sam_train.cli.export, sam_train.weights.hf, sam_train.predictor; "
        "assert 'transformers' not in sys.modules, 'imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_a_text_prompt_sam_is_refused_in_one_line(tmp_path, capsys):
    from conftest import tiny_sam

    from sam_train.cli.export import main

    sam = tiny_sam(text_embed_dim=8)
    src = tmp_path / "text_sam.safetensors"
    save_weights(src, sam.state_dict(), {"architecture": sam.architecture})
    with pytest.raises(SystemExit) as exit_:
        main([str(src), "--format", "hf", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "text-prompt branch" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_sam_without_relative_positions_exports_loads_strictly_and_agrees(tmp_path):
    """`model.use_rel_pos=false` (the demo's SAM: its encoder is exactly the MAE's ViT)."""
    from sam_train.models.sam.sam import build_sam

    sam = randomise(tiny_sam().eval())
    plain = build_sam(**{**sam.architecture, "use_rel_pos": False}).eval()
    plain.load_state_dict(sam.state_dict(), strict=False)
    assert not any("rel_pos" in k for k in plain.state_dict())
    src = tmp_path / "plain.safetensors"
    save_weights(src, plain.state_dict(), {"architecture": plain.architecture})
    model, info = transformers.SamModel.from_pretrained(
        export(src, "hf", tmp_path / "hf"), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    theirs, _ = hf_sam_outputs(model.eval(), images, **PROMPTS["points+box"])
    mine, _ = our_outputs(plain, images, **PROMPTS["points+box"])
    assert (theirs - mine).abs().max() < 1e-4
    for path in (src, export(src, "sam", tmp_path / "sam.pth"), tmp_path / "hf"):
        again, _ = our_outputs(load_sam(path), images, **PROMPTS["points+box"])
        assert torch.allclose(again, mine, atol=1e-5), path
    (tmp_path / "sam.json").unlink()  # the official layout alone cannot say its architecture
    with pytest.raises(WeightsError, match=r"sam\.pth: .*no relative-position tables"):
        load_sam(tmp_path / "sam.pth")
