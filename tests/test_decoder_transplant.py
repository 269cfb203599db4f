"""`model.decoder_from`: a SAM takes another SAM's prompt encoder and mask decoder (and, when
its own encoder did not come with one, that SAM's output norm)."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    DISTILL_TINY,
    SAM_TINY,
    assert_one_line_error,
    call_main,
    randomise,
    sam_train_main,
    tiny_sam,
    tiny_sam_arch,
)

from sam_train.lit.sam_model import trainable_sam
from sam_train.lit.teacher_models import distill_student
from sam_train.weights.decoder_transplant import output_norm
from sam_train.weights.safetensors_io import save_weights


def save_sam(sam, path) -> str:
    save_weights(path, sam.state_dict(), {"architecture": sam.architecture})
    return str(path)


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    """A tiny SAM with non-trivial weights everywhere (its output norm far from identity)."""
    sam = randomise(tiny_sam(), seed=3)
    return sam, save_sam(sam, tmp_path_factory.mktemp("donor") / "donor.safetensors")


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_decoder_and_output_norm_come_from_the_donor(donor):
    sam, path = donor
    mine = trainable_sam(decoder_from=path, **tiny_sam_arch())
    assert same(mine.prompt_encoder, sam.prompt_encoder)
    assert same(mine.mask_decoder, sam.mask_decoder)
    assert same(output_norm(mine.image_encoder), output_norm(sam.image_encoder))
    # the rest of the encoder is the model's own
    assert not torch.equal(
        mine.image_encoder.blocks[0].attn.qkv.weight, sam.image_encoder.blocks[0].attn.qkv.weight
    )


def test_an_encoder_from_init_from_keeps_its_own_output_norm(donor, tmp_path):
    sam, path = donor
    other = randomise(tiny_sam(), seed=7)
    mine = trainable_sam(
        init_from=save_sam(other, tmp_path / "other.safetensors"),
        decoder_from=path,
        **tiny_sam_arch(),
    )
    assert same(mine.image_encoder, other.image_encoder)
    assert same(mine.mask_decoder, sam.mask_decoder)


def test_freezing_the_encoder_freezes_it_whole_and_the_new_norm_trains_with_a_new_neck(donor):
    _, path = donor
    frozen = trainable_sam(decoder_from=path, freeze=["image_encoder"], **tiny_sam_arch())
    assert not any(p.requires_grad for p in frozen.image_encoder.parameters())
    assert all(p.requires_grad for p in frozen.mask_decoder.parameters())
    probe = trainable_sam(
        decoder_from=path,
        freeze=["image_encoder.patch_embed", "image_encoder.blocks"],
        **tiny_sam_arch(),
    )
    trains = {n for n, p in probe.image_encoder.named_parameters() if p.requires_grad}
    assert trains and all(n.startswith("neck.") or n == "pos_embed" for n in trains)
    assert output_norm(probe.image_encoder).weight.requires_grad


def test_other_decoder_sizes_are_refused_with_the_overrides_that_fit(donor, capfd, tmp_path):
    _, path = donor
    res = call_main(
        sam_train_main,
        [
            "stage=sam",
            *SAM_TINY,
            "model.decoder_mlp_dim=32",
            f"model.decoder_from={path}",
            f"hydra.run.dir={tmp_path}",
        ],
        capfd,
    )
    assert_one_line_error(res, "sam-train", "decoder_mlp_dim 32 vs 64", "model.decoder_mlp_dim=64")


def test_distillation_refuses_a_second_decoder(donor):
    _, path = donor
    arch = {**tiny_sam_arch(16), "image_size": 32, "patch_size": 8}
    with pytest.raises(ValueError, match="copies the teacher's prompt encoder"):
        distill_student(path, decoder_from=path, **arch)


def test_a_distillation_run_with_a_second_decoder_stops_in_one_line(donor, capfd, tmp_path):
    _, path = donor
    res = call_main(
        sam_train_main,
        [
            *DISTILL_TINY,
            f"model.teacher={path}",
            f"model.decoder_from={path}",
            f"hydra.run.dir={tmp_path}",
        ],
        capfd,
    )
    assert_one_line_error(
        res, "sam-train", "stage=distill copies the teacher's", "model.decoder_from"
    )
