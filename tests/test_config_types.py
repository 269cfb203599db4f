"""Config values are checked against the annotations of the constructor they go to."""

from __future__ import annotations

from omegaconf import OmegaConf

from sam_train.config_types import argument_type_problems


def example(
    steps: int = 1,
    lr: float | None = None,
    clip: int | float | None = None,
    name: str = "x",
    flag: bool = False,
    shape: tuple[int, int] = (1, 2),
) -> None:
    """A constructor with plain and richer annotations."""


TARGET = f"{__name__}.example"


def problems(**values) -> list[str]:
    return argument_type_problems(OmegaConf.create({"_target_": TARGET, **values}), "node")


def test_values_of_the_annotated_types_pass() -> None:
    assert problems(steps=3, lr=1e-3, clip=1, name="y", flag=True, shape=[4, 5]) == []
    assert problems(lr=None, clip=None, lr_unused="${steps}") == []
    assert problems(lr=1) == []  # an integer is a number


def test_each_wrong_value_is_one_line_naming_the_key_and_the_type() -> None:
    assert problems(steps="abc") == ["node.steps=abc: expected an integer"]
    assert problems(steps=2.5) == ["node.steps=2.5: expected an integer"]
    assert problems(steps=True) == ["node.steps=True: expected an integer"]
    assert problems(lr="fast") == ["node.lr=fast: expected a number or null"]
    assert problems(flag="maybe") == ["node.flag=maybe: expected true or false"]
    assert problems(steps="x", clip="y") == [
        "node.steps=x: expected an integer",
        "node.clip=y: expected a number or null",
    ]


def test_richer_annotations_and_unknown_targets_are_left_to_the_constructor() -> None:
    assert problems(shape="anything", name=5) == []
    assert argument_type_problems(OmegaConf.create({"_target_": "no.such.thing"}), "n") == []
    assert argument_type_problems(OmegaConf.create({"a": 1}), "n") == []
