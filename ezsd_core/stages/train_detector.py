"""Stage 04 `train_detector`: the Mask R-CNN with an embedding head, distilling CLIP region embeddings.

Paper step: the distillation detector (arXiv 2303.12145 §3.4; method spec §5). Base GT boxes train
RPN, classifier (cosine with frozen base text embeddings + a learned background, learnable
temperature; softmax CE or Seesaw), class-agnostic semantic box regression and masks; per image the
base GT boxes plus N regions sampled from stage 03 go through the same head, and their embeddings
are pulled to CLIP's (weighted L1 x D x lambda). No novel annotation is read.
Reads: ``01_finetune_clip`` (text embeddings), ``03_extract_features`` (targets), train annotations.
Writes: ``04_train_detector/{model.safetensors, train_log.jsonl, manifest.json}`` and the resume
state ``checkpoints/last.pt``. Runs on several processes under ``torchrun`` (DDP):
``torchrun --nproc_per_node 2 -m ezsd_core.stages.train_detector params/<split>.yaml``.
Imports: config, artefacts, lineage, runtime, data, shards, structures, detector.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from safetensors.torch import load_file
from torch import Tensor
from tqdm import tqdm

from ezsd_core import artefacts, config, data, detector, lineage, runtime, shards
from ezsd_core.artefacts import StageResult
from ezsd_core.config import TrainDetectorConfig
from ezsd_core.structures import ImageRecord

STAGE = "train_detector"
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# the science (pure)


def distill_targets(gt_boxes: Tensor, gt_embeds: Tensor, region_boxes: Tensor, region_embeds: Tensor,
                    region_probs: Tensor, num_regions: int, rng: np.random.Generator) -> dict[str, Tensor]:
    """The distillation RoIs of one image (spec §5.3): every base GT box, then ``num_regions`` regions
    sampled uniformly with replacement; weights 1 for GT and CLIP's probability for regions,
    rescaled to mean 1 over the image.

    Args:
        gt_boxes: (N, 4) XYXY; gt_embeds: (N, D); region_boxes: (M, 4); region_embeds: (M, D);
        region_probs: (M,); num_regions: regions to sample (none when M = 0).

    Returns:
        ``boxes`` (N + R, 4) float32, ``embeds`` (N + R, D) float32, ``weights`` (N + R,) float32.
    """
    idx = torch.from_numpy(rng.integers(0, len(region_boxes), num_regions)) if len(region_boxes) else \
        torch.zeros(0, dtype=torch.int64)
    weights = torch.cat([torch.ones(len(gt_boxes)), region_probs[idx].float()])
    if len(weights) and weights.sum() > 0:
        weights = weights * len(weights) / weights.sum()
    return {"boxes": torch.cat([gt_boxes.float(), region_boxes[idx].float()]),
            "embeds": torch.cat([gt_embeds.float(), region_embeds[idx].float()]), "weights": weights}


def repeat_factors(records: list[ImageRecord], thresh: float) -> np.ndarray:
    """LVIS repeat-factor sampling (Gupta et al., 2019): r_c = max(1, sqrt(t / f_c)) with f_c the share
    of training images holding category c; an image repeats max_c r_c times. (I,) float64."""
    if thresh <= 0:
        return np.ones(len(records))
    counts: dict[int, int] = {}
    for r in records:
        for c in set(r.gt_category_ids.tolist()):
            counts[c] = counts.get(c, 0) + 1
    rc = {c: max(1.0, math.sqrt(thresh / (n / len(records)))) for c, n in counts.items()}
    return np.array([max((rc[c] for c in set(r.gt_category_ids.tolist())), default=1.0) for r in records])


def training_seed(cfg: TrainDetectorConfig) -> int:
    """The seed of every draw in training (head init, batch order, flips, region samples).

    ``replicate: 0`` gives ``cfg.seed`` itself (runs recorded before the knob keep their draws); replicate
    k > 0 an independent stream from ``(seed, k)``, so replicates measure training noise on fixed
    upstream artefacts.
    """
    if cfg.replicate == 0:
        return cfg.seed
    return int(np.random.SeedSequence([cfg.seed, cfg.replicate]).generate_state(1)[0])


def batch_plan(num_images: int, factors: np.ndarray, batch_size: int, max_steps: int, seed: int) -> list[list[tuple]]:
    """``max_steps`` batches of ``(epoch, image index)``: each epoch a seeded shuffle in which image i
    appears floor(r_i) times plus once more with probability frac(r_i). Deterministic in the seed."""
    plan, flat, epoch = [], [], 0
    while len(plan) < max_steps:
        rng = np.random.default_rng([seed, epoch])
        reps = np.floor(factors).astype(int) + (rng.random(num_images) < factors - np.floor(factors))
        order = rng.permutation(np.repeat(np.arange(num_images), reps))
        flat += [(epoch, int(i)) for i in order]
        while len(flat) >= batch_size and len(plan) < max_steps:
            plan.append(flat[:batch_size])
            flat = flat[batch_size:]
        epoch += 1
    return plan


@dataclass(frozen=True)
class Schedule:
    """A training schedule in optimizer steps (what ``train`` runs), resolved from the config.

    Attributes:
        max_steps: steps in all; lr_steps: steps at which the LR drops x0.1 (step schedule);
        warmup_steps: linear warm-up; images_per_epoch: training images an epoch draws (after
        filtering and repeat-factor sampling; 0 for a ``max_steps`` schedule, which has no epochs).
    """

    max_steps: int
    lr_steps: tuple[int, ...]
    warmup_steps: int
    images_per_epoch: int


def schedule(cfg: TrainDetectorConfig, factors: np.ndarray, batch_size: int | None = None) -> Schedule:
    """The schedule of a config over the training images it really has.

    An ``epochs`` schedule is converted with the images an epoch draws, E = round(sum of the repeat
    factors) (one per image without repeat-factor sampling): ``max_steps`` = ceil(epochs * E / B) and
    each LR drop at epoch e is at step round(e * E / B), B = ``batch_size`` (the reference's 12 epochs,
    drops at 8 and 11, for COCO 48/17). A ``max_steps`` schedule is taken as it is (``lr_steps`` in steps).

    Args:
        cfg: the stage config (``epochs`` xor ``max_steps``; ``lr_steps``; ``warmup_steps``; ``batch_size``).
        factors: (I,) float64 repeat factor of each training image after the input rules (``repeat_factors``).
        batch_size: images per step over all processes (``config.train_batch``; default ``cfg.batch_size``).

    Raises:
        ValueError: no training image, or an LR drop after the last epoch.
    """
    b = batch_size or cfg.batch_size
    if cfg.epochs is None:
        return Schedule(cfg.max_steps, tuple(cfg.lr_steps), cfg.warmup_steps, 0)
    images = int(round(float(np.sum(factors))))
    if images == 0:
        raise ValueError("epochs: the training split has no image with a base box, so an epoch has no step")
    late = [e for e in cfg.lr_steps if e > cfg.epochs]
    if late:
        raise ValueError(f"lr_steps: {late[0]} is after the last of epochs={cfg.epochs} (with epochs, lr_steps are "
                         f"epochs)")
    return Schedule(max_steps=math.ceil(cfg.epochs * images / b),
                    lr_steps=tuple(round(e * images / b) for e in cfg.lr_steps),
                    warmup_steps=cfg.warmup_steps, images_per_epoch=images)


def lr_factor(step: int, sched: Schedule, lr_schedule: str) -> float:
    """Linear warm-up from 0.001, then x0.1 at each of ``lr_steps`` (``step``) or cosine to 0 at ``max_steps``."""
    if step < sched.warmup_steps:
        return 0.001 + (1 - 0.001) * step / sched.warmup_steps
    if lr_schedule == "step":
        return 0.1 ** sum(step >= s for s in sched.lr_steps)
    return 0.5 * (1 + math.cos(math.pi * (step - sched.warmup_steps) / max(1, sched.max_steps - sched.warmup_steps)))


def detector_spec(cfg: TrainDetectorConfig, embed_dim: int) -> detector.DetectorSpec:
    """The DetectorSpec of a stage config (what the manifest records to rebuild the model)."""
    names = {f for f in detector.DetectorSpec.__dataclass_fields__}
    values = {k: v for k, v in config.config_dict(cfg).items() if k in names}
    return detector.DetectorSpec(**values, min_size=tuple(cfg.min_sizes), embed_dim=embed_dim,
                                 box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100)


# ---------------------------------------------------------------------------------------------
# data


class DistillDataset(torch.utils.data.Dataset):
    """Item ``(epoch, i)`` -> (image (3, H, W) float [0, 1], target, distill) for training image i.

    All randomness (flip, region sampling) comes from a generator seeded with (seed, epoch, i), so an
    item is the same whenever and in whichever process it is loaded (exact resume).
    """

    def __init__(self, records: list[ImageRecord], label_of: dict[int, int], feats: dict[int, tuple] | None,
                 cfg: TrainDetectorConfig):
        self.records, self.label_of, self.feats, self.cfg = records, label_of, feats, cfg
        self.seed = training_seed(cfg)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, dict, dict | None]:
        epoch, i = key
        r = self.records[i]
        rng = np.random.default_rng([self.seed, epoch, i])
        image = data.read_image(r.file_name).float() / 255
        masks = torch.from_numpy(mask_utils.decode(r.gt_masks)).permute(2, 0, 1) if r.gt_masks else \
            torch.zeros(0, r.height, r.width, dtype=torch.uint8)
        labels = torch.tensor([self.label_of[int(c)] for c in r.gt_category_ids], dtype=torch.int64)
        target = {"boxes": r.gt_boxes.clone(), "labels": labels, "masks": masks}
        distill = None
        if self.feats is not None:
            shard, pos = self.feats[r.image_id]
            gt, reg = shard.rows(pos, "gt"), shard.rows(pos, "region")
            distill = distill_targets(gt["gt_boxes"], gt["gt_embeds"], reg["region_boxes"], reg["region_embeds"],
                                      reg["region_probs"], self.cfg.num_distill_regions, rng)
        if rng.random() < self.cfg.hflip_prob:
            image, target["masks"] = image.flip(-1), target["masks"].flip(-1)
            target["boxes"] = _flip(target["boxes"], r.width)
            if distill is not None:
                distill["boxes"] = _flip(distill["boxes"], r.width)
        return image, target, distill


def _flip(boxes: Tensor, width: int) -> Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def feature_index(run_root: Path) -> dict[int, tuple[shards.RaggedShard, int]]:
    """Training image id -> (stage-03 shard, position) over the shards stage 03's manifest lists
    (shard files it does not list, e.g. of another ``num_shards``, are ignored)."""
    index = {}
    for p in lineage.upstream_outputs(run_root, "extract_features", f"{config.ExtractFeaturesConfig.SHARD_DIR}/"):
        shard = shards.RaggedShard(p)
        index.update({int(i): (shard, n) for n, i in enumerate(shard.image_ids.tolist())})
    return index


# ---------------------------------------------------------------------------------------------
# training


def _to(device: torch.device, batch: list) -> tuple[list, list, list | None]:
    images = [b[0].to(device) for b in batch]
    targets = [{k: v.to(device) for k, v in b[1].items()} for b in batch]
    distill = None if batch[0][2] is None else [{k: v.to(device) for k, v in b[2].items()} for b in batch]
    return images, targets, distill


class _StopRequest:
    """Set by the preemption signal (SLURM's ``--signal``, ``SUBMITIT_PREEMPT_SIGNAL``, default USR2) or by
    ``checkpoints/PREEMPT``; every rank agrees on it at each step (a MAX all-reduce)."""

    def __init__(self, stop_file: Path, world: int):
        self.stop_file, self.world, self.signalled = stop_file, world, False
        self.signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
        self.old = signal.signal(self.signum, self._handle) if _main_thread() else None

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        flag = self.signalled or self.stop_file.exists()
        if self.world > 1:
            import torch.distributed as dist

            t = torch.tensor([int(flag)])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def close(self) -> None:
        if self.old is not None:
            signal.signal(self.signum, self.old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


NO_DECAY = ("log_temperature", "background.weight")  # decay would pull T towards 1 and bg towards 0


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and conv kernels only: never on biases, norm scales/shifts (ndim 1),
    the learned log-temperature or the background vector."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (rest if p.ndim <= 1 or name.endswith(NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _optimizer(model: torch.nn.Module, cfg: TrainDetectorConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _train(model: detector.EzsdDetector, dataset: DistillDataset, cfg: TrainDetectorConfig, device: torch.device,
           out: Path, config_hash: str, stop: _StopRequest, sched: Schedule | None = None) -> dict:
    """The training loop: resumes from ``checkpoints/last.pt`` (same config hash) and checkpoints every
    ``checkpoint_every`` steps; appends ``train_log.jsonl`` (truncated to the checkpoint on resume).

    On the preemption signal (or ``checkpoints/PREEMPT``) it checkpoints after the current step and
    returns at once with ``preempted_at_step``; the requeued run resumes from there.

    Returns:
        Summary numbers (steps, seconds per step, last logged losses; ``preempted_at_step`` when stopped).
    """
    rank, world = runtime.distributed_rank_and_size()
    batch_size, lr = config.train_batch(cfg, world)
    ddp = runtime.wrap_ddp(model, device) if world > 1 else model
    opt = _optimizer(model, cfg)
    amp_dtype = runtime.amp_dtype(device, cfg.amp)  # bf16 where the GPU has it (no scaler), else fp16 + scaler
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ckpt_path, log_path = out / "checkpoints" / "last.pt", out / "train_log.jsonl"
    start = _resume(ckpt_path, model, opt, scaler, cfg, config_hash, log_path)
    factors = repeat_factors(dataset.records, cfg.repeat_factor_thresh)
    sched = sched or schedule(cfg, factors, batch_size)
    plan = batch_plan(len(dataset), factors, batch_size, sched.max_steps, training_seed(cfg))
    mine = [b[rank::world] for b in plan[start:]]
    # a generator of its own: creating the iterator must not draw from torch's global RNG (exact resume)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=mine, num_workers=cfg.num_workers, collate_fn=list,
                                         generator=torch.Generator().manual_seed(training_seed(cfg)))
    sums: dict[str, float] = {}
    t0, step = time.perf_counter(), start
    state = lambda n: {"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                       "step": n, "torch_rng": torch.get_rng_state(), "config_hash": config_hash}
    ddp.train()
    for step, batch in enumerate(tqdm(loader, desc="train_detector", initial=start, total=sched.max_steps,
                                      mininterval=10, disable=rank > 0), start):
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(step, sched, cfg.lr_schedule)
        images, targets, distill = _to(device, batch)
        with runtime.autocast(device, cfg.amp):
            losses = ddp(images, targets, distill).losses
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        for k, v in {**losses, "loss": loss}.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if (step + 1) % cfg.log_every == 0 and rank == 0:
            row = {"step": step + 1, "lr": round(lr * lr_factor(step, sched, cfg.lr_schedule), 8),
                   **{k: round(v / cfg.log_every, 5) for k, v in sums.items()}}
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            sums = {}
        if (step + 1) % cfg.checkpoint_every == 0 and rank == 0 and step + 1 < sched.max_steps:
            runtime.save_checkpoint(ckpt_path, state(step + 1))
        if step + 1 < sched.max_steps and stop():
            if rank == 0 and (step + 1) % cfg.checkpoint_every:
                runtime.save_checkpoint(ckpt_path, state(step + 1))
            log.warning("preempted: checkpointed at step %d; a rerun resumes from it", step + 1)
            return {"steps": sched.max_steps, "resumed_from_step": start, "preempted_at_step": step + 1}
    steps_run = sched.max_steps - start
    return {"steps": sched.max_steps, "images_per_epoch": sched.images_per_epoch, "resumed_from_step": start,
            "images_per_step": batch_size,
            "seconds_per_step": round((time.perf_counter() - t0) / max(steps_run, 1), 3)}


def train(model: detector.EzsdDetector, dataset: DistillDataset, cfg: TrainDetectorConfig, device: torch.device,
          out: Path, config_hash: str, sched: Schedule | None = None) -> dict:
    """The training loop (``_train``) with the preemption signal handled: ``checkpoints/PREEMPT`` is cleared,
    the handler installed, and the previous handler restored however the loop ends."""
    (out / artefacts.PREEMPT_FILE).unlink(missing_ok=True)
    stop = _StopRequest(out / artefacts.PREEMPT_FILE, runtime.distributed_rank_and_size()[1])
    try:
        return _train(model, dataset, cfg, device, out, config_hash, stop, sched)
    finally:
        stop.close()


def _resume(path: Path, model, opt, scaler, cfg: TrainDetectorConfig, config_hash: str, log_path: Path) -> int:
    """Load the resume state when it belongs to this config; returns the step to start from.

    ``force`` starts over; a checkpoint of another config is an error unless forced.
    """
    if cfg.force or not path.exists():
        path.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
        return 0
    state = runtime.load_checkpoint(path)
    if state["config_hash"] != config_hash:
        raise ValueError(f"{path} was written with another config; run with --force to start over")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if log_path.exists():  # drop rows logged after the checkpoint: the resumed run logs them again
        rows = [x for x in log_path.read_text().splitlines() if x and json.loads(x)["step"] <= state["step"]]
        artefacts.atomic_write_bytes(log_path, "".join(r + "\n" for r in rows).encode())
    log.info("resuming from step %d", state["step"])
    return int(state["step"])


# ---------------------------------------------------------------------------------------------
# the stage


def load_toy_backbone(model: detector.EzsdDetector, run_root: Path) -> None:
    """Initialise the toy backbone's trunk from stage 00's iconic pretraining (the toy "ImageNet" weights).

    Raises:
        MissingArtefactError: stage 00 did not write ``backbone.safetensors``.
        ValueError: the weights do not fit the trunk.
    """
    manifest = artefacts.require_complete(run_root, "pretrain_clip")
    if "backbone.safetensors" not in {o["path"] for o in manifest["outputs"]}:
        raise artefacts.MissingArtefactError("pretrain_clip", artefacts.stage_dir(run_root, "pretrain_clip"),
                                             "it wrote no backbone.safetensors (backbone_steps: 0?)")
    state = load_file(str(artefacts.stage_dir(run_root, "pretrain_clip") / "backbone.safetensors"))
    trunk = {k: v for k, v in state.items() if k.startswith(("stem.", "stages."))}
    missing, unexpected = model.backbone.load_state_dict(trunk, strict=False)
    if unexpected or any(not k.startswith("fpn.") for k in missing):
        raise ValueError(f"backbone.safetensors does not fit the toy backbone (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def run(cfg: TrainDetectorConfig) -> StageResult:
    """Train (or resume training) the detector; write the final weights, the log and the manifest."""
    determinism = runtime.seed_everything(training_seed(cfg))
    runtime.configure_threads()
    config.train_batch(cfg, runtime.launched_world_size())  # a batch the processes cannot share: one line, now
    rank, world = runtime.init_distributed()
    device = runtime.resolve_device(cfg.device) if world == 1 else runtime.distributed_device(cfg.device)
    begun = lineage.begin(cfg, STAGE)
    if begun.skipped:
        return begun.skipped
    out, chash, upstream, started = begun.stage_dir, begun.config_hash, begun.upstream, begun.started_at
    out.mkdir(parents=True, exist_ok=True)
    text = load_file(str(artefacts.stage_dir(cfg.run_root, "finetune_clip") / "text_embeds.safetensors"))
    dropped: dict[str, int] = {}
    split, records = data.read_config_records(cfg, "train", with_masks=True, counts=dropped)
    label_of = split.label_map("base")
    feats = feature_index(cfg.run_root) if cfg.distill_weight > 0 else None
    spec = detector_spec(cfg, embed_dim=text["base"].shape[1])
    model = detector.build_detector(spec, text["base"])
    if cfg.backbone == "toy" and cfg.pretrained_backbone:
        load_toy_backbone(model, cfg.run_root)
    model = model.to(device)
    step_batch = config.train_batch(cfg, runtime.distributed_rank_and_size()[1])[0]
    sched = schedule(cfg, repeat_factors(records, cfg.repeat_factor_thresh), step_batch)
    log.info("schedule: %d steps of %d images (%s)", sched.max_steps, step_batch,
             f"{cfg.epochs} epochs of {sched.images_per_epoch} images" if cfg.epochs else "max_steps")
    summary = train(model, DistillDataset(records, label_of, feats, cfg), cfg, device, out, chash, sched)
    if rank > 0 or "preempted_at_step" in summary:  # a preempted run writes no model and no manifest
        return StageResult(out, False, summary)
    shards.save_tensors(out / "model.safetensors", model.state_dict(), {"stage": STAGE})
    (out / "checkpoints" / "last.pt").unlink(missing_ok=True)  # resume state of a finished run
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x] \
        if (out / "train_log.jsonl").exists() else []
    if not rows:
        artefacts.atomic_write_bytes(out / "train_log.jsonl", b"")
    summary.update({k: v for k, v in (rows[-1] if rows else {}).items() if k.startswith("loss")})
    manifest = artefacts.write_manifest(
        out, stage=STAGE, split=cfg.split, config=config.config_dict(cfg), config_hash=chash, upstream=upstream,
        outputs=["model.safetensors", "train_log.jsonl"],
        summary={**summary, "processes": world, **{f"input/{k}": v for k, v in dropped.items() if v}},
        started_at=started, extra={"detector": asdict(spec), "vocabulary": {"base": list(split.ids("base"))},
                                   "schedule": asdict(sched),
                                   "determinism": determinism})
    return StageResult(out, False, manifest["summary"])


def main(argv: list[str] | None = None) -> None:
    """``python -m ezsd_core.stages.train_detector PARAMS [--set k=v ...]`` (the torchrun entry point)."""
    import argparse

    p = argparse.ArgumentParser(description="train the detector of a params file (under torchrun for DDP)")
    p.add_argument("params", type=Path)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config.stage_config(config.read_params(args.params), STAGE, source=str(args.params), overrides=args.set)
        result = run(cfg)
    except config.ConfigError as e:  # one line per process, not a traceback from every rank
        print(f"ezsd: error: {e}", file=sys.stderr)
        sys.exit(2)
    runtime.finish_distributed()
    log.info("%s", result)
    if "preempted_at_step" in result.summary:
        sys.exit(3)  # not finished: the requeued job resumes from the checkpoint


if __name__ == "__main__":
    main(sys.argv[1:])
