from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ezsd_core import shards
from ezsd_core.structures import RegionSet


def _rs(image_id: int, m: int, d: int = 4) -> RegionSet:
    g = torch.Generator().manual_seed(image_id)
    return RegionSet(image_id=image_id, region_boxes=torch.rand(m, 4, generator=g),
                     region_scores=torch.rand(m, generator=g), region_category_ids=torch.arange(m),
                     region_probs=torch.rand(m, generator=g), region_embeds=torch.rand(m, d, generator=g).half())


def test_csr_round_trip_with_an_image_without_regions(tmp_path: Path) -> None:
    sets = [_rs(10, 3), _rs(11, 0), _rs(12, 2)]
    gt = [{"gt_boxes": torch.rand(1, 4), "gt_embeds": torch.rand(1, 4).half()} for _ in range(2)]
    gt.append({"gt_boxes": torch.zeros(0, 4), "gt_embeds": torch.zeros(0, 4).half()})
    p = tmp_path / "shard-00000-of-00001.safetensors"
    shards.write_shard(p, [10, 11, 12], {"region": [shards.region_rows(s) for s in sets], "gt": gt},
                       {"key": "k", "split": "smoke"})
    shard = shards.RaggedShard(p)
    assert len(shard) == 3 and shard.image_ids.tolist() == [10, 11, 12] and shard.groups == ["gt", "region"]
    assert shard._offsets["region"].tolist() == [0, 3, 3, 5], "an empty image is two equal offsets"
    for i, s in enumerate(sets):
        back = shard.region_set(i)
        assert back.image_id == s.image_id and torch.equal(back.region_boxes, s.region_boxes)
        assert torch.equal(back.region_embeds, s.region_embeds) and back.region_embeds.dtype == torch.float16
    assert shard.rows(2, "gt")["gt_boxes"].shape == (0, 4)
    meta = shards.read_header(p)
    assert meta["box_format"] == "xyxy_abs" and meta["key"] == "k" and meta["schema_version"] == "1"
    assert shards.is_current(p, "k") and not shards.is_current(p, "other")
    assert not shards.is_current(tmp_path / "missing.safetensors", "k")


def test_inconsistent_rows_are_rejected(tmp_path: Path) -> None:
    bad = {"region_boxes": torch.zeros(2, 4), "region_scores": torch.zeros(3)}
    with pytest.raises(ValueError, match="bad rows"):
        shards.write_shard(tmp_path / "x.safetensors", [1], {"region": [bad]}, {})
    with pytest.raises(ValueError, match="1 entries for 2 images"):
        shards.write_shard(tmp_path / "x.safetensors", [1, 2], {"region": [shards.region_rows(_rs(1, 1))]}, {})
    assert not (tmp_path / "x.safetensors").exists()
