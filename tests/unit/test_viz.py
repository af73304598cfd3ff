"""FiftyOne conversion with the real fiftyone and its bundled database."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ezsd_core import artefacts, config, data, shards, viz
from ezsd_core.structures import RegionSet

ROOT = Path(__file__).resolve().parents[2]


def test_relative_boxes() -> None:
    assert viz.relative_xywh(torch.tensor([[10.0, 20.0, 30.0, 60.0]]), 100, 200) == [[0.1, 0.1, 0.2, 0.2]]


def _fake_regions_run(world: Path, run_root: Path) -> tuple[config.ProposeRegionsConfig, list]:
    doc = config.read_params(ROOT / "params/smoke.yaml")
    cfg = config.stage_config(doc, "propose_regions", source="smoke",
                              overrides=[f"common.data_root={world}", f"common.run_root={run_root}",
                                         "propose_regions.num_shards=1"])
    split, val = data.read_config_records(cfg, "val")
    rows = []
    for r in val:  # one region on the first GT box (labelled with its category), one elsewhere
        boxes = torch.cat([r.gt_boxes[:1], torch.tensor([[1.0, 1.0, 9.0, 9.0]])])
        cats = torch.cat([r.gt_category_ids[:1], torch.tensor([split.ids("novel")[0]])])
        rows.append(shards.region_rows(RegionSet(image_id=r.image_id, region_boxes=boxes, region_category_ids=cats,
                                                 region_scores=torch.tensor([2.0, 1.0])[:len(boxes)],
                                                 region_probs=torch.tensor([0.9, 0.5])[:len(boxes)])))
    folder = artefacts.stage_dir(run_root, "propose_regions")
    shards.write_shard(folder / "regions" / artefacts.shard_name(0, 1), [r.image_id for r in val], {"region": rows},
                       {"key": "k"}, image_fields={"image_is_val": torch.ones(len(val), dtype=torch.bool)})
    artefacts.write_manifest(folder, stage="propose_regions", split="smoke", config=config.config_dict(cfg),
                             config_hash="sha256:0123456789", upstream={}, summary={}, started_at="t",
                             outputs=["regions/shard-00000-of-00001.safetensors"])
    return cfg, val


def test_regions_dataset_has_tagged_gt_and_regions(smoke_world: Path, tmp_path: Path) -> None:
    pytest.importorskip("fiftyone")
    cfg, val = _fake_regions_run(smoke_world, tmp_path / "run")
    ds = viz.regions_dataset(tmp_path / "run", max_samples=10)
    assert ds.name == "ezsd-smoke-regions-01234567" and len(ds) == len(val)
    split = data.read_split(smoke_world / cfg.val_annotations, "smoke")
    for rec in val:
        sample = ds.match({"image_id": rec.image_id}).first()
        gt = sample["ground_truth"].detections
        assert [d.label for d in gt] == [split.name_of(int(c)) for c in rec.gt_category_ids]
        assert [d.tags for d in gt] == [[split.role_of(int(c))] for c in rec.gt_category_ids]
        if len(rec.gt_boxes):
            x1, y1, x2, y2 = rec.gt_boxes[0].tolist()
            assert gt[0].bounding_box == pytest.approx([x1 / rec.width, y1 / rec.height, (x2 - x1) / rec.width,
                                                        (y2 - y1) / rec.height])
            regions = sample["regions"].detections
            assert regions[0].bounding_box == pytest.approx(gt[0].bounding_box) and regions[0].confidence == 2.0
            assert regions[1].tags == ["novel"] and regions[1]["probability"] == pytest.approx(0.5)
        assert sample.metadata.width == rec.width
