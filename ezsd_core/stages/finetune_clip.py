"""Stage 01 `finetune_clip`: tune only CLIP's LayerNorm parameters on crops of base-category boxes.

Paper step: "re-normalising CLIP" (arXiv 2303.12145 §3.2; method spec §2): every base GT box of
the training split, cropped at r = 1.2, is classified by logit_scale * cos against text embeddings
of the base names (recomputed each step, since text LayerNorms train too); everything else,
``logit_scale`` included, stays frozen.
Reads: the base CLIP (open_clip tag/file, or ``00_pretrain_clip``), train and val annotations.
Writes: ``01_finetune_clip/{clip_ln.safetensors, text_embeds.safetensors, metrics.json,
train_log.jsonl, manifest.json}``. Imports: config, artefacts, lineage, runtime, data, crops, clip.
"""

from __future__ import annotations

import json
import logging
import math
import time

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ezsd_core import artefacts, clip, config, crops, data, lineage, runtime, shards
from ezsd_core.artefacts import StageResult
from ezsd_core.config import FinetuneClipConfig
from ezsd_core.splits import CategorySplit
from ezsd_core.structures import ImageRecord

STAGE = "finetune_clip"
AREA_BINS = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, float("inf"))}  # COCO
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# the science (pure)


def classification_loss(image_embeds: Tensor, text_embeds: Tensor, labels: Tensor, logit_scale: float,
                        kind: str) -> Tensor:
    """Loss of classifying crops by scaled cosine similarity.

    Args:
        image_embeds: (N, D) L2-normalised crop embeddings.
        text_embeds: (C, D) L2-normalised class embeddings.
        labels: (N,) int64 in 0..C-1.
        logit_scale: CLIP's fixed multiplier (100 for OpenAI CLIP).
        kind: ``bce`` (the reference: sigmoid BCE against one-hot, mean over N x C) or ``softmax`` (CE).

    Returns:
        Scalar loss.
    """
    logits = logit_scale * image_embeds @ text_embeds.T
    if kind == "bce":
        target = nn.functional.one_hot(labels, len(text_embeds)).float()
        return nn.functional.binary_cross_entropy_with_logits(logits, target)
    return nn.functional.cross_entropy(logits, labels)


def accuracy_table(pred: Tensor, labels: Tensor, novel: Tensor, areas: Tensor) -> dict[str, float]:
    """Top-1 accuracy of crop classification, overall, base/novel and by COCO size bin.

    Args:
        pred, labels: (N,) int64 predicted / true class indices.
        novel: (N,) bool, the true class is novel.
        areas: (N,) box areas in px^2 of the original image.

    Returns:
        ``{"top1_all", "top1_base", "top1_novel", "top1_small", "top1_medium", "top1_large"}`` (NaN when empty).
    """
    hit = (pred == labels).float()
    mean = lambda m: float(hit[m].mean()) if bool(m.any()) else float("nan")
    out = {"top1_all": mean(torch.ones_like(novel)), "top1_base": mean(~novel), "top1_novel": mean(novel)}
    for name, (lo, hi) in AREA_BINS.items():
        out[f"top1_{name}"] = mean((areas >= lo) & (areas < hi))
    return out


# ---------------------------------------------------------------------------------------------
# data


class GTCrops(torch.utils.data.Dataset):
    """One item per image: the crops of its GT boxes (spec §1.3) and their class indices.

    Items: ``(crops (n, 3, S, S) float in [0, 1], labels (n,) int64, areas (n,) float)``.
    """

    def __init__(self, records: list[ImageRecord], label_of: dict[int, int], size: int, scale: float,
                 min_side: float):
        self.records = [r for r in records if len(r.gt_boxes)]
        self.label_of, self.size, self.scale, self.min_side = label_of, size, scale, min_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        r = self.records[i]
        x = crops.cut_crops(data.read_image(r.file_name), r.gt_boxes, scale=self.scale, size=self.size,
                            min_side=self.min_side)
        labels = torch.tensor([self.label_of[int(c)] for c in r.gt_category_ids], dtype=torch.int64)
        wh = r.gt_boxes[:, 2:] - r.gt_boxes[:, :2]
        return x, labels, wh[:, 0] * wh[:, 1]


def _collate(items: list) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(torch.cat(parts) for parts in zip(*items))  # type: ignore[return-value]


def _loader(ds: GTCrops, batch_size: int, workers: int, shuffle: bool, seed: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       collate_fn=_collate, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# evaluation and training


@torch.no_grad()
def evaluate(model: clip.Clip, loader: torch.utils.data.DataLoader, text: Tensor, novel_class: Tensor,
             device: torch.device, amp: bool = False) -> dict[str, float]:
    """Top-1 accuracy of val GT crops over the all-category vocabulary (``text``: (K, D))."""
    preds, labels, areas = [], [], []
    for x, y, a in loader:
        with runtime.autocast(device, amp):
            emb = nn.functional.normalize(clip.encode_images(model, model.normalize(x.to(device))), dim=-1).float()
        preds.append((emb @ text.T).argmax(1).cpu())
        labels.append(y)
        areas.append(a)
    y = torch.cat(labels)
    return accuracy_table(torch.cat(preds), y, novel_class[y], torch.cat(areas))


def train(model: clip.Clip, loader, names: tuple[str, ...], cfg: FinetuneClipConfig, device: torch.device
          ) -> list[dict]:
    """Tune the LayerNorms of ``cfg.towers`` for ``cfg.epochs`` passes over the loader, or for ``cfg.max_steps``
    batches (the last pass cut short); returns the logged rows (loss per step)."""
    n_train = clip.set_trainable_layernorms(model.model, cfg.towers)
    log.info("training %d LayerNorm parameters of the %s tower(s)", n_train, "+".join(cfg.towers))
    params = [p for p in model.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)  # constant LR, as the reference
    scale, rows, step = cfg.loss_logit_scale or model.logit_scale, [], 0
    gen = torch.Generator().manual_seed(cfg.seed)
    text_frozen = "text" not in cfg.towers
    fixed_text = clip.encode_texts(model, names, cfg.prompt_templates).detach() if text_frozen else None
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype(device, cfg.amp) == torch.float16)
    model.model.train()
    epochs = cfg.epochs if cfg.epochs is not None else math.ceil(cfg.max_steps / max(1, len(loader)))
    for epoch in range(epochs):
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        for x, y, _ in tqdm(loader, desc=f"finetune_clip epoch {epoch + 1}/{epochs}", unit="batch", mininterval=5):
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
            flip = torch.rand(len(x), generator=gen) < cfg.hflip_prob
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            with runtime.autocast(device, cfg.amp):
                emb = nn.functional.normalize(clip.encode_images(model, model.normalize(x.to(device))), dim=-1)
                text = fixed_text if text_frozen else clip.encode_texts(model, names, cfg.prompt_templates)
            loss = classification_loss(emb.float(), text.float(), y.to(device), scale, cfg.loss)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            step += 1
            if step % cfg.log_every == 0:
                rows.append({"step": step, "epoch": epoch + 1, "loss": round(loss.item(), 5)})
    model.model.eval()
    clip.set_trainable_layernorms(model.model, [])
    return rows


# ---------------------------------------------------------------------------------------------
# the stage


def base_clip(cfg: FinetuneClipConfig, device: torch.device) -> tuple[clip.Clip, dict[str, str | None]]:
    """The CLIP to tune: an open_clip model + tag/file, or the stage-00 teacher; and its record."""
    if cfg.clip_pretrained == config.PRETRAIN_CLIP:
        teacher = artefacts.require_complete(cfg.run_root, config.PRETRAIN_CLIP)
        name = teacher["config"]["clip_model"]
        folder = artefacts.stage_dir(cfg.run_root, config.PRETRAIN_CLIP)
        weights: str | None = str(folder / "open_clip_model.safetensors")
    else:
        name, weights = cfg.clip_model, cfg.clip_pretrained
    model = clip.build_clip(name, weights, allow_random_init=cfg.allow_random_init, device=device)
    return model, {"model_name": name, "pretrained": weights}


@torch.no_grad()
def category_embeds(model: clip.Clip, split: CategorySplit, templates: tuple[str, ...]) -> Tensor:
    """(C, D) unit text embeddings of every category of the split, in ``split.category_ids`` order: one
    encoding per name, which every vocabulary's rows are taken from (LVIS: 1203 prompts, not 3 x 1203)."""
    return clip.encode_texts(model, split.names, templates).cpu()


def _text_embeds(split: CategorySplit, every: Tensor) -> dict[str, Tensor]:
    out = {}
    row = {cid: k for k, cid in enumerate(split.category_ids)}
    for vocab in ("base", "novel", "all", "proposal"):
        ids = split.ids(vocab)
        out[vocab] = every[[row[c] for c in ids]].contiguous() if ids else torch.zeros(0, 0)
        out[f"{vocab}_category_ids"] = torch.tensor(ids, dtype=torch.int64)
    return out


def run(cfg: FinetuneClipConfig) -> StageResult:
    """Measure crop accuracy, tune the LayerNorms, measure again; write the LN params and text embeddings.

    Returns:
        StageResult whose summary holds the before/after accuracies.
    """
    begun = lineage.begin(cfg, STAGE)
    if begun.skipped:
        return begun.skipped
    determinism = runtime.seed_everything(cfg.seed)
    runtime.configure_threads()
    device = runtime.resolve_device(cfg.device)
    out, chash, upstream, started = begun.stage_dir, begun.config_hash, begun.upstream, begun.started_at
    model, record = base_clip(cfg, device)
    fired: dict[str, dict[str, int]] = {"train": {}, "val": {}}  # input-rule counts of the reads below
    split, train_records = data.read_config_records(cfg, "train", counts=fired["train"])
    _, val_records = data.read_config_records(cfg, "val", counts=fired["val"])
    label = lambda vocab: {cid: k for k, cid in enumerate(split.ids(vocab))}
    make = lambda recs, lut: GTCrops(recs, lut, model.image_size, cfg.crop_scale, cfg.min_box_side)
    train_loader = _loader(make(train_records, label("base")), cfg.batch_size, cfg.num_workers, True, cfg.seed)
    val_loader = _loader(make(val_records, label("all")), 16, cfg.num_workers, False, cfg.seed)
    novel_class = torch.tensor([split.role_of(c) == "novel" for c in split.ids("all")])
    all_rows = [split.category_ids.index(c) for c in split.ids("all")]
    measure = lambda every: evaluate(model, val_loader, every[all_rows].to(device), novel_class, device, cfg.amp)
    every = category_embeds(model, split, cfg.prompt_templates)
    before = measure(every)
    t0 = time.perf_counter()
    rows = train(model, train_loader, split.prompt_names("base"), cfg, device)
    seconds = time.perf_counter() - t0
    if cfg.epochs and len(train_loader):  # tuned: the text tower may have changed
        every = category_embeds(model, split, cfg.prompt_templates)
    after = measure(every)
    out.mkdir(parents=True, exist_ok=True)
    tuned = {k: v.detach().cpu().contiguous() for k, v in clip.layernorm_parameters(model.model, cfg.towers).items()}
    shards.save_tensors(out / "clip_ln.safetensors", tuned,
                        {"clip_model": record["model_name"], "towers": ",".join(cfg.towers)})
    shards.save_tensors(out / "text_embeds.safetensors", _text_embeds(split, every),
                        {"templates": json.dumps(list(cfg.prompt_templates)), "normalized": "true"})
    artefacts.atomic_write_bytes(out / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    metrics = {**{f"before/{k}": round(v, 4) for k, v in before.items()},
               **{f"after/{k}": round(v, 4) for k, v in after.items()},
               "num_train_crops": sum(len(r.gt_boxes) for r in train_loader.dataset.records),
               "num_val_crops": sum(len(r.gt_boxes) for r in val_loader.dataset.records),
               "num_tuned_parameters": sum(v.numel() for v in tuned.values()),
               **{f"input/{sub}/{k}": v for sub, c in fired.items() for k, v in c.items() if v}}
    artefacts.atomic_write_json(out / "metrics.json", metrics)  # deterministic; timings go to the summary
    manifest = artefacts.write_manifest(
        out, stage=STAGE, split=cfg.split, config=config.config_dict(cfg), config_hash=chash, upstream=upstream,
        outputs=["clip_ln.safetensors", "text_embeds.safetensors", "metrics.json", "train_log.jsonl"],
        summary={**metrics, "train_seconds": round(seconds, 1)}, started_at=started,
        extra={"clip": record, "determinism": determinism})
    return StageResult(out, False, manifest["summary"])


