"""FiftyOne views of a run: val images with their GT (base/novel tags) and CLIP regions (later: detections).

Role: the only code that speaks FiftyOne. ``fiftyone`` is imported inside functions (it starts a
database and takes seconds), so the package imports without it. Boxes are converted here, at the
edge, from XYXY absolute to FiftyOne's relative ``[x, y, w, h]`` in [0, 1].
Reads: stage manifests and shards of a run. Layer 4: imports layers 0-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ezsd_core import artefacts, config, data, lineage, shards
from ezsd_core.splits import CategorySplit


def relative_xywh(boxes: Tensor, width: int, height: int) -> list[list[float]]:
    """(N, 4) XYXY absolute -> N FiftyOne boxes ``[x, y, w, h]`` relative to the image size."""
    b = boxes.double()
    return torch.stack([b[:, 0] / width, b[:, 1] / height, (b[:, 2] - b[:, 0]) / width,
                        (b[:, 3] - b[:, 1]) / height], 1).tolist()


def to_fo_detections(boxes: Tensor, category_ids: Sequence[int], split: CategorySplit, width: int, height: int,
                     scores: Sequence[float] | None = None, **attributes: Sequence[Any]):
    """A ``fo.Detections`` of N boxes (XYXY absolute), labelled by category name and tagged base/novel/other.

    Args:
        boxes: (N, 4) XYXY absolute; category_ids: N dataset ids; split: names and roles.
        width, height: image size in pixels.
        scores: optional N confidences; attributes: more per-box values, each a length-N sequence.
    """
    import fiftyone as fo

    dets = []
    for i, (box, cid) in enumerate(zip(relative_xywh(boxes, width, height), category_ids)):
        extra = {k: v[i] for k, v in attributes.items()}
        dets.append(fo.Detection(label=split.name_of(int(cid)), bounding_box=box, tags=[split.role_of(int(cid))],
                                 confidence=None if scores is None else float(scores[i]), **extra))
    return fo.Detections(detections=dets)


def regions_dataset(run_root: Path | str, *, max_samples: int = 50, top_regions: int = 20):
    """A non-persistent FiftyOne dataset of the val images that stage 02 proposed regions for.

    Fields: ``ground_truth`` (base + novel GT, tagged) and ``regions`` (top regions with CLIP's
    category as label, the region score as confidence and ``probability``). Named
    ``ezsd-<split>-regions-<config hash[:8]>`` and overwritten when rebuilt.

    Raises:
        MissingArtefactError: stage 02 is not complete.
    """
    import fiftyone as fo

    manifest = artefacts.require_complete(run_root, "propose_regions")
    cfg = config.load_config(config.ProposeRegionsConfig, manifest["config"])
    split, records = data.read_config_records(cfg, "val")
    by_id = {r.image_id: r for r in records}
    name = f"ezsd-{cfg.split}-regions-{manifest['config_hash'].split(':')[1][:8]}"
    ds = fo.Dataset(name, overwrite=True)
    samples = []
    for p in lineage.upstream_outputs(run_root, "propose_regions", f"{cfg.SHARD_DIR}/"):  # never a glob
        shard = shards.RaggedShard(p)
        for i in range(len(shard)):
            if not shard.image_fields["image_is_val"][i] or len(samples) >= max_samples:
                continue
            rs, rec = shard.region_set(i), by_id[int(shard.image_ids[i])]
            sample = fo.Sample(filepath=str(Path(rec.file_name).resolve()), image_id=rec.image_id)
            sample["ground_truth"] = to_fo_detections(rec.gt_boxes, rec.gt_category_ids.tolist(), split,
                                                      rec.width, rec.height)
            top = slice(0, top_regions)
            sample["regions"] = to_fo_detections(rs.region_boxes[top], rs.region_category_ids[top].tolist(), split,
                                                 rec.width, rec.height, scores=rs.region_scores[top].tolist(),
                                                 probability=rs.region_probs[top].tolist())
            samples.append(sample)
    ds.add_samples(samples)
    ds.compute_metadata()
    return ds


def launch(dataset, port: int = 5151):
    """Start the FiftyOne App on 127.0.0.1 (remote mode: open the printed URL); returns the session."""
    import fiftyone as fo

    return fo.launch_app(dataset, remote=True, address="127.0.0.1", port=port, auto=False)


def predictions_dataset(predictions, name: str, persistent: bool = True):
    """A FiftyOne dataset of ``predict.Prediction`` results (field ``predictions``, labels = names)."""
    import fiftyone as fo
    from PIL import Image

    ds = fo.Dataset(name, overwrite=True)
    ds.persistent = persistent
    samples = []
    for p in predictions:
        with Image.open(p.image) as im:
            width, height = im.size
        dets = [fo.Detection(label=n, bounding_box=b, confidence=float(s))
                for n, b, s in zip(p.names, relative_xywh(p.boxes, width, height), p.scores.tolist())]
        samples.append(fo.Sample(filepath=str(Path(p.image).resolve()), predictions=fo.Detections(detections=dets)))
    ds.add_samples(samples)
    return ds


def detections_dataset(run_root: Path | str, *, max_samples: int = 200, min_score: float = 0.05):
    """The regions dataset's images with stage-05 detections added (``detections``, tagged base/novel),
    evaluated against the GT with FiftyOne's COCO protocol (eval key ``eval``).

    Returns:
        (dataset, per-class table): rows ``{"class", "role", "AP"}`` sorted by role then AP.

    Raises:
        MissingArtefactError: stage 05 is not complete.
    """
    import json

    import fiftyone as fo

    manifest = artefacts.require_complete(run_root, "evaluate")
    cfg = config.load_config(config.EvaluateConfig, manifest["config"])
    split, records = data.read_config_records(cfg, "val")
    dets: dict[int, list[dict]] = {}
    for d in json.loads((artefacts.stage_dir(run_root, "evaluate") / "detections.json").read_text()):
        if d["score"] >= min_score:
            dets.setdefault(d["image_id"], []).append(d)
    name = f"ezsd-{cfg.split}-detections-{manifest['config_hash'].split(':')[1][:8]}"
    ds = fo.Dataset(name, overwrite=True)
    samples = []
    for rec in records[:max_samples]:
        sample = fo.Sample(filepath=str(Path(rec.file_name).resolve()), image_id=rec.image_id)
        sample["ground_truth"] = to_fo_detections(rec.gt_boxes, rec.gt_category_ids.tolist(), split,
                                                  rec.width, rec.height)
        mine = dets.get(rec.image_id, [])
        boxes = torch.tensor([d["bbox"] for d in mine], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # COCO XYWH -> XYXY
        sample["detections"] = to_fo_detections(boxes, [d["category_id"] for d in mine], split, rec.width,
                                                rec.height, scores=[d["score"] for d in mine])
        samples.append(sample)
    ds.add_samples(samples)
    results = ds.evaluate_detections("detections", gt_field="ground_truth", eval_key="eval", method="coco",
                                     compute_mAP=True)
    names = {split.name_of(c): split.role_of(c) for c in split.ids("all")}
    table = [{"class": n, "role": names[n], "AP": round(float(results.mAP([n])), 4)}
             for n in names if n in results.classes]
    return ds, sorted(table, key=lambda r: (r["role"], -r["AP"]))
