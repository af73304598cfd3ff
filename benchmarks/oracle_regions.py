"""Oracle regions: what distillation would gain from a perfect class-agnostic proposer (a diagnostic bound).

No stage may do this: it reads **every** annotation of the training split, novel and "other" categories
included. It copies a run's stages 00-02 to a new run root and puts, in front of each training image's
stage-02 regions, the GT boxes (XYXY absolute pixels) of all its non-base objects, scored above the
proposer's best region; the list is then cut to ``propose_regions.max_regions`` again. Stages 03-05 of the
new run then treat them as they treat CLIP regions (base-overlap filter, CLIP names and weights, drop what
CLIP calls base, first ``extract_features.max_regions``). The val images' regions are left as they were.

    .venv/bin/python benchmarks/oracle_regions.py --set common.data_root=data/dev100v7 \
        --run runs/dev100v7-s3600 --out runs/dev100v7-s3600-oracle
    .venv/bin/ezsd run params/toy_coco.yaml --set common.data_root=data/dev100v7 \
        --set common.run_root=runs/dev100v7-s3600-oracle

The copied stage-02 manifest keeps the source's config (its hash) and records ``oracle_regions`` with the
source run; ``ezsd run`` then starts at stage 03. Stages 00-01 are hard-linked, stage 02 is copied.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from ezsd_core import ablation, artefacts, config, data, shards
from ezsd_core.structures import RegionSet


def with_oracle(rs: RegionSet, oracle_boxes: torch.Tensor, oracle_ids: torch.Tensor, max_regions: int) -> RegionSet:
    """``rs`` with (N, 4) XYXY ``oracle_boxes`` of categories ``oracle_ids`` (N,) first, cut to ``max_regions``.

    Oracle rows get a score 1 above the best region's (so they stay first in score order) and probability 1.
    """
    n = len(oracle_boxes)
    top = float(rs.region_scores.max()) if len(rs.region_scores) else 0.0
    cut = slice(0, max_regions)
    return RegionSet(
        image_id=rs.image_id,
        region_boxes=torch.cat([oracle_boxes.to(rs.region_boxes.dtype), rs.region_boxes])[cut],
        region_scores=torch.cat([torch.full((n,), top + 1.0, dtype=rs.region_scores.dtype), rs.region_scores])[cut],
        region_category_ids=torch.cat([oracle_ids.to(rs.region_category_ids.dtype), rs.region_category_ids])[cut],
        region_probs=torch.cat([torch.ones(n, dtype=rs.region_probs.dtype), rs.region_probs])[cut])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params/toy_coco.yaml"))
    p.add_argument("--run", type=Path, required=True, help="source run root with a complete 02_propose_regions")
    p.add_argument("--out", type=Path, required=True, help="new run root (must not exist)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args()
    if args.out.exists():
        raise SystemExit(f"--out {args.out} exists; remove it or choose another run root")
    cfg = config.stage_config(config.read_params(args.params), "propose_regions", source=str(args.params),
                              overrides=[*args.set, f"common.run_root={args.run}"])
    src02 = artefacts.stage_dir(args.run, "propose_regions")
    manifest = artefacts.read_manifest(src02)
    if not manifest or manifest.get("status") != "complete":
        raise SystemExit(f"--run {args.run}: 02_propose_regions is not complete")
    for stage in ("pretrain_clip", "finetune_clip"):
        ablation.link_stage(artefacts.stage_dir(args.run, stage), artefacts.stage_dir(args.out, stage))
    dst02 = artefacts.stage_dir(args.out, "propose_regions")
    shutil.copytree(src02, dst02, ignore=shutil.ignore_patterns("notebooks", ".parts"))  # a real copy: rewritten

    split, records = data.read_config_records(cfg, "train", vocab="proposal", keep_empty=True)
    by_id = {r.image_id: r for r in records}
    added = images = 0
    outputs = [o["path"] for o in manifest["outputs"]]
    for rel in (o for o in outputs if o.endswith(".safetensors")):
        shard = shards.RaggedShard(dst02 / rel)
        header = {k: v for k, v in shard.metadata.items() if k not in ("schema_version", "box_format")}
        rows = []
        for i in range(len(shard)):
            rs = shard.region_set(i)
            rec = by_id.get(rs.image_id)
            if rec is not None and not bool(shard.image_fields["image_is_val"][i]):
                keep = [j for j, c in enumerate(rec.gt_category_ids.tolist()) if split.role_of(int(c)) != "base"]
                rs = with_oracle(rs, rec.gt_boxes[keep], rec.gt_category_ids[keep], cfg.max_regions)
                added, images = added + len(keep), images + 1
            rows.append(shards.region_rows(rs))
        shards.write_shard(dst02 / rel, shard.image_ids.tolist(), {"region": rows}, header,
                           image_fields=shard.image_fields)
    artefacts.write_manifest(dst02, stage=manifest["stage"], split=manifest["split"], config=manifest["config"],
                             config_hash=manifest["config_hash"], upstream=manifest["upstream"], outputs=outputs,
                             summary=manifest["summary"], started_at=manifest["started_at"],
                             extra={"oracle_regions": {"source_run": str(args.run), "images": images,
                                                       "oracle_boxes": added}})
    print(f"{added} non-base GT boxes put first in the regions of {images} training images -> {args.out}")


if __name__ == "__main__":
    main()
