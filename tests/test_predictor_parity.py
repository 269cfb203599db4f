"""`SamPredictor` against segment-anything's on odd sizes and non-square photos: the same tiny
random weights in both, the same image and prompts, the same logits and masks.

Both predictors run the same image-encoder module, so what is compared is everything around
it (resize, normalisation, padding, prompt coordinates, decoder, mask post-processing); the
encoders' own agreement is pinned in test_sam_reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_sam

from sam_train.predictor import SamPredictor, resized_shape
from sam_train.weights.keymaps import sam_state_to_official
from sam_train.weights.official import build_official_sam

seg = pytest.importorskip("segment_anything")
IMAGE_SIZE = 256  # the long side both predictors resize to


@pytest.fixture(scope="module")
def predictors():
    ours = tiny_sam(image_size=IMAGE_SIZE, window_size=4).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial values everywhere (zero tables would hide mistakes)
        for p in ours.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    official = build_official_sam(ours.architecture)
    official.load_state_dict(sam_state_to_official(ours.state_dict()), strict=True)
    official.image_encoder = ours.image_encoder  # one encoder: see the module docstring
    inputs = []  # what each predictor hands the encoder: [B, 3, S, S]
    ours.image_encoder.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    return SamPredictor(ours), seg.SamPredictor(official.eval()), inputs


def test_short_side_is_rounded_half_up_like_resize_longest_side():
    from segment_anything.utils.transforms import ResizeLongestSide

    for h, w in [(257, 512), (400, 600), (517, 333), (65, 128), (1, 3), (299, 299)]:
        expected = ResizeLongestSide.get_preprocess_shape(h, w, IMAGE_SIZE)
        assert resized_shape(h, w, IMAGE_SIZE) == expected, (h, w)
    assert resized_shape(257, 512, 256) == (129, 256)  # round() would give 128


@pytest.mark.parametrize("h, w", [(257, 512), (400, 600), (517, 333), (301, 255)])
def test_logits_and_masks_match_segment_anything_on_odd_sizes(predictors, h, w):
    mine, theirs, inputs = predictors
    image = (np.random.default_rng(h * w).random((h, w, 3)) * 255).astype(np.uint8)
    inputs.clear()
    mine.set_image(image)
    theirs.set_image(image)
    assert mine._input_hw == tuple(theirs.input_size)
    assert torch.equal(inputs[0], inputs[1])  # resized, normalised and padded alike
    prompts = [
        dict(point_coords=np.array([[w * 0.31, h * 0.77]]), point_labels=np.array([1])),
        dict(
            point_coords=np.array([[w - 1.5, 0.5], [w * 0.5, h * 0.5]]),
            point_labels=np.array([1, 0]),
        ),
        dict(box=np.array([w * 0.1, h * 0.2, w * 0.73, h * 0.91]), multimask_output=False),
        dict(
            point_coords=np.array([[w * 0.4, h * 0.6]]),
            point_labels=np.array([1]),
            box=np.array([3.0, 5.0, w - 7.0, h - 2.0]),
            multimask_output=False,
        ),
    ]
    for prompt in prompts:
        m_ours, s_ours, low_ours = mine.predict(**prompt)
        m_theirs, s_theirs, low_theirs = theirs.predict(**prompt, return_logits=True)
        assert np.abs(low_ours.numpy() - low_theirs).max() < 1e-5
        assert np.abs(s_ours - s_theirs).max() < 1e-5
        logits_full = m_theirs  # with return_logits, the full-size logits
        agree = m_ours == (logits_full > 0)
        # a pixel can flip only where the logit is within float error of the threshold
        assert np.all(agree | (np.abs(logits_full) < 1e-4)), (h, w, prompt)
        assert agree.mean() > 0.9999
