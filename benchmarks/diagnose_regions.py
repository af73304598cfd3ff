"""What the distillation targets of a run show: background, pieces of objects, or whole objects.

Reads a run's ``03_extract_features`` shards and, as a diagnostic only (no stage may), **every**
annotation of the training split, novel and "other" categories included. Each stage-03 region is put
in one bin by its best overlap with any training GT box (XYXY absolute pixels):
  * ``background``: IoU < 0.1 with every GT box;
  * ``<role>_object``: IoU >= 0.5 with a GT box of that role (base / novel / other);
  * ``<role>_part``: otherwise, the role of the box it overlaps most (0.1 <= IoU < 0.5).
Also: the share of novel training objects that some region covers at IoU >= 0.5 ("novel objects
targeted"), the mean distillation weight (CLIP's max probability) per bin, and how CLIP named the
regions of each bin (share named novel).

    .venv/bin/python benchmarks/diagnose_regions.py --params params/toy_coco.yaml [--run runs/X] [--first K] \
        [--against runs/Y] [--out-name NAME]
writes benchmarks/results/diagnose_regions_<run name>[-first<K>].json, or diagnose_regions_<NAME>.json.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
from torchvision.ops import box_iou

from ezsd_core import artefacts, config, data, shards

RESULTS = Path(__file__).resolve().parent / "results"


def region_bins(records: list, index: dict, split, first: int | None = None) -> dict:
    """Bin counts, weights and names of the stage-03 regions over ``records`` (all GT of every role).

    ``first``: only each image's first ``first`` regions (stage 03 stores them in proposal-score
    order, so this is what ``extract_features.max_regions=first`` would have kept).
    """
    count, weight, named_novel = collections.Counter(), collections.defaultdict(float), collections.Counter()
    names = collections.defaultdict(collections.Counter)  # bin -> CLIP's name of each region -> count
    novel_objects, novel_hit = 0, 0
    for r in records:
        if r.image_id not in index:
            continue
        shard, pos = index[r.image_id]
        rows = shard.rows(pos, "region")
        boxes, probs, cats = rows["region_boxes"].float(), rows["region_probs"].float(), rows["region_category_ids"]
        if first is not None:
            boxes, probs, cats = boxes[:first], probs[:first], cats[:first]
        roles = [split.role_of(int(c)) for c in r.gt_category_ids]
        iou = box_iou(boxes, r.gt_boxes.float()) if len(r.gt_boxes) else torch.zeros(len(boxes), 0)
        for j in range(len(boxes)):
            best = float(iou[j].max()) if iou.shape[1] else 0.0
            role = roles[int(iou[j].argmax())] if iou.shape[1] else ""
            name = "background" if best < 0.1 else f"{role}_object" if best >= 0.5 else f"{role}_part"
            count[name] += 1
            weight[name] += float(probs[j])
            named_novel[name] += split.role_of(int(cats[j])) == "novel"
            names[name][split.name_of(int(cats[j]))] += 1
        for g, role in enumerate(roles):
            if role == "novel":
                novel_objects += 1
                novel_hit += bool(len(boxes)) and float(iou[:, g].max()) >= 0.5
    total = sum(count.values())
    return {"num_regions": total, "share": {k: round(v / total, 4) for k, v in sorted(count.items())},
            "mean_weight": {k: round(weight[k] / count[k], 4) for k in sorted(count)},
            "named_novel": {k: round(named_novel[k] / count[k], 4) for k in sorted(count)},
            "top_names": {k: {n: round(c / count[k], 4) for n, c in names[k].most_common(5)} for k in sorted(count)},
            "top_names_all": {n: round(c / total, 4) for n, c in
                              sum(names.values(), collections.Counter()).most_common(8)},
            "novel_objects": novel_objects, "novel_objects_targeted": round(novel_hit / max(novel_objects, 1), 4)}


def shard_index(run_root: Path) -> dict:
    """image id -> (stage-03 shard, position) of a run."""
    manifest = artefacts.require_complete(run_root, "extract_features")
    index = {}
    for out in manifest["outputs"]:
        shard = shards.RaggedShard(artefacts.stage_dir(run_root, "extract_features") / out["path"])
        index.update({int(i): (shard, n) for n, i in enumerate(shard.image_ids.tolist())})
    return index


def shared_regions(index: dict, other: dict, first: int | None = None, iou: float = 0.7) -> dict:
    """How many of one run's stage-03 regions the other run also distils (a region there at IoU >= ``iou``)."""
    mine, shared = 0, 0
    for image_id, (shard, pos) in index.items():
        boxes = shard.rows(pos, "region")["region_boxes"].float()[:first]
        theirs = other[image_id][0].rows(other[image_id][1], "region")["region_boxes"].float()[:first] \
            if image_id in other else torch.zeros(0, 4)
        mine += len(boxes)
        if len(boxes) and len(theirs):
            shared += int((box_iou(boxes, theirs).max(dim=1).values >= iou).sum())
    return {"regions": mine, f"shared_at_iou{iou}": round(shared / max(mine, 1), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params/toy_coco.yaml"))
    p.add_argument("--run", type=Path, help="run root (default: the params file's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--first", type=int, help="only each image's first K regions (as max_regions=K would keep)")
    p.add_argument("--against", type=Path, help="another run: the share of this run's regions it distils too")
    p.add_argument("--out-name", help="results file diagnose_regions_<this>.json (default: the run's name, "
                   "-first<K> appended with --first), so that a re-run does not overwrite an earlier record")
    args = p.parse_args()
    overrides = [*args.set, *([f"common.run_root={args.run}"] if args.run else [])]
    cfg = config.stage_config(config.read_params(args.params), "extract_features", source=str(args.params),
                              overrides=overrides)
    index = shard_index(Path(cfg.run_root))
    split, records = data.read_config_records(cfg, "train", vocab="proposal", keep_empty=True)
    result = {"run": str(cfg.run_root), "first": args.first, **region_bins(records, index, split, args.first)}
    if args.against:
        result["against"] = {"run": str(args.against), **shared_regions(index, shard_index(args.against), args.first)}
    RESULTS.mkdir(exist_ok=True)
    suffix = f"-first{args.first}" if args.first is not None else ""
    path = RESULTS / f"diagnose_regions_{args.out_name or Path(cfg.run_root).name + suffix}.json"
    artefacts.atomic_write_json(path, result)
    print(json.dumps(result, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
