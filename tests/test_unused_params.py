"""`zero_touching`: every trainable parameter gets a gradient (zero where unused), the loss
is unchanged, frozen parameters stay without one."""

from __future__ import annotations

import torch

from sam_train.training.unused_params import zero_touching


def test_unused_branch_gets_a_zero_gradient_and_the_loss_is_unchanged():
    used, unused, frozen = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    frozen.requires_grad_(False)
    loss = used(torch.ones(1, 3)).sum()
    touched = loss + zero_touching([*unused.parameters(), *frozen.parameters()])
    touched.backward()
    assert touched.item() == loss.item()
    assert all(p.grad is not None and not p.grad.any() for p in unused.parameters())
    assert all(p.grad is None for p in frozen.parameters())
    assert used.weight.grad.abs().sum() > 0


def test_nothing_to_touch_is_a_plain_zero():
    assert zero_touching([]).item() == 0.0
