"""The stage-2 shard group is named for what it reads (data=shards_sam); its old name
(data=coco) composes the same config and is announced in one line."""

from __future__ import annotations

from conftest import compose_train
from omegaconf import OmegaConf

from sam_train.cli.overrides import renamed_option_notices


def test_old_name_composes_the_same_data_config(tmp_path):
    new = compose_train(["stage=sam", "data=shards_sam", "data.path=x"], tmp_path, hydra=True)
    old = compose_train(["stage=sam", "data=coco", "data.path=x"], tmp_path, hydra=True)
    assert OmegaConf.to_container(new.data) == OmegaConf.to_container(old.data)
    assert old.hydra.runtime.choices["data"] == "coco"


def test_old_name_gets_one_notice_naming_the_new_one():
    (line,) = renamed_option_notices({"data": "coco", "stage": "sam"})
    assert "data=shards_sam" in line and "data=coco" in line
    assert renamed_option_notices({"data": "shards_sam"}) == []
