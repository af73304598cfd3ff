"""Typed stage configs and the strict params loader (params/<split>.yaml -> frozen dataclass).

Role: one frozen dataclass per stage (DESIGN.md II.6). A stage's parameters are
``{**doc["common"], **doc[<stage>]}`` plus ``--set`` overrides; the keys must equal the dataclass
fields and the names in the stage notebook's ``parameters`` cell. Every problem (unknown or
missing key, wrong type, ``1e-4`` read as a string, out-of-range value, unknown stage) is a
one-line ``ConfigError`` naming the file, the key, what was given and what is allowed.
Reads: params YAML. Layer 0: standard library + PyYAML only (no torch).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ezsd_core import artefacts, splits


class ConfigError(ValueError):
    """A params problem, reported in one line that names where it is and what is allowed."""


def knob(*, lo: float | None = None, hi: float | None = None, choices: Sequence[Any] | None = None,
         default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a range (inclusive) or a set of allowed values."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": tuple(choices or ())})


# ---------------------------------------------------------------------------------------------
# configs


@dataclass(frozen=True, kw_only=True, slots=True)
class CommonConfig:
    """Fields shared by every stage (the ``common`` section).

    Paths in ``*_annotations`` / ``*_images`` are relative to ``data_root``.
    """

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("run_root", "device", "num_workers", "force")
    UPSTREAM: ClassVar[tuple[str, ...]] = ()  # stages whose artefacts this stage reads

    split: str  # a built-in split id (splits.SPLIT_IDS), or the name of the split declared below
    split_style: str | None = knob(choices=("coco", "lvis"), default=None)  # null: built-in split; else declare one
    base_names: tuple[str, ...] | str | None = None  # declared split: names, or a names file (rel. to data_root)
    novel_names: tuple[str, ...] | str | None = None  # declared split: names, or a names file (rel. to data_root)
    data_root: Path
    train_annotations: Path
    val_annotations: Path
    train_images: Path
    val_images: Path
    run_root: Path
    seed: int = knob(lo=0)
    device: str = knob(default="cpu")  # "cpu", "cuda", "cuda:1", or "auto"
    num_workers: int = knob(lo=0, default=0)  # DataLoader processes
    force: bool = False  # recompute even when complete; discard a resume checkpoint of another config

    def __post_init__(self) -> None:
        _validate(self)

    def upstream_stages(self) -> tuple[str, ...]:
        """Stage ids this stage reads (its lineage); may depend on the config's values."""
        return type(self).UPSTREAM


@dataclass(frozen=True, kw_only=True, slots=True)
class PretrainClipConfig(CommonConfig):
    """Stage 00 (toy worlds only): train the tiny CLIP teacher on the toy web's captioned pictures."""

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = CommonConfig.RUNTIME_FIELDS + ("log_every", "amp")

    clip_model: str  # open_clip model name; the ezsd-* configs ship in ezsd_core/resources
    max_steps: int = knob(lo=0)  # optimizer steps
    batch_size: int = knob(lo=2)
    lr: float = knob(lo=0.0)
    text_lr: float = knob(lo=0.0)  # the text tower needs a larger step to leave the symmetric start
    weight_decay: float = knob(lo=0.0)
    warmup_steps: int = knob(lo=0)
    logit_scale_init: float = knob(lo=0.01, hi=100.0)  # initial exp(logit_scale); 1.0, not CLIP's 1/0.07 (README)
    logit_scale_lr: float = knob(lo=0.0)  # the scale must grow fast once embeddings spread
    augment_prob: float = knob(lo=0.0, hi=1.0)  # share of pictures given crop-like zoom / aspect / noise
    image_warmup_steps: int = knob(lo=0)  # first steps: image tower alone, supervised (LiT-style start)
    backbone_steps: int = knob(lo=0)  # the toy "ImageNet": detector backbone trained on iconic base images
    backbone_lr: float = knob(lo=0.0)
    log_every: int = knob(lo=1, default=50)  # steps between loss/accuracy log rows


@dataclass(frozen=True, kw_only=True, slots=True)
class FinetuneClipConfig(CommonConfig):
    """Stage 01: tune only CLIP's LayerNorms on crops of base GT boxes (method spec §2)."""

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = CommonConfig.RUNTIME_FIELDS + ("log_every",)

    clip_model: str | None  # open_clip name, verbatim; null when clip_pretrained is pretrain_clip
    clip_pretrained: str | None  # open_clip tag ("openai"), a checkpoint file, or pretrain_clip (stage 00)
    allow_random_init: bool  # clip_pretrained: null builds an untrained CLIP only when this is true
    towers: tuple[str, ...] = knob(choices=("image", "text"))  # whose LayerNorms are tuned
    prompt_templates: tuple[str, ...]  # e.g. ["a photo of a {}"] (the reference uses just this one)
    loss: str = knob(choices=("bce", "softmax"))  # bce = the reference's sigmoid BCE on logit_scale*cos
    loss_logit_scale: float | None = knob(lo=0.01)  # multiplier of cos in the loss; null = CLIP's own (100)
    epochs: int | None = knob(lo=0)  # passes over the training crops; or max_steps (exactly one of the two)
    max_steps: int | None = knob(lo=0)  # optimizer steps (batches), when epochs is null
    batch_size: int = knob(lo=1)  # images per step; every base GT crop of an image is a sample
    lr: float = knob(lo=0.0)
    weight_decay: float = knob(lo=0.0)
    grad_clip: float = knob(lo=0.0)  # max L2 norm of the gradient (0.1 in the reference)
    crop_scale: float = knob(lo=1.0)  # box enlargement r (1.2)
    min_box_side: float = knob(lo=0.0)  # px of the original image; narrower boxes are widened first
    hflip_prob: float = knob(lo=0.0, hi=1.0)
    log_every: int = knob(lo=1, default=50)
    amp: bool = False  # CLIP under autocast on CUDA: bf16 where the GPU has it, else fp16 + GradScaler (CPU: off)

    def upstream_stages(self) -> tuple[str, ...]:
        return ("pretrain_clip",) if self.clip_pretrained == PRETRAIN_CLIP else ()


@dataclass(frozen=True, kw_only=True, slots=True)
class ProposeRegionsConfig(CommonConfig):
    """Stage 02: score a dense anchor grid with the tuned CLIP, keep confident regions (spec §3)."""

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = CommonConfig.RUNTIME_FIELDS + (
        "shard_index", "num_shards", "crops_per_batch", "images_per_part", "amp")
    UPSTREAM: ClassVar[tuple[str, ...]] = ("finetune_clip",)
    SHARD_DIR: ClassVar[str] = "regions"

    clip_layernorms: str = knob(choices=("tuned", "original"))  # original: score with the CLIP before stage 01
    resize_min_side: int = knob(lo=1)  # anchors live on the image resized to this short side ...
    resize_max_side: int = knob(lo=1)  # ... with the long side capped here (800 / 1333 in the reference)
    region_anchor_stride: int = knob(lo=1)  # px of the resized image between anchor centres
    region_anchor_sizes: tuple[int, ...]  # side px in the resized image (stride x scales: 32..512 in the reference)
    region_anchor_ratios: tuple[float, ...]  # h / w
    crop_scale: float = knob(lo=1.0)  # r = 1.0 when scoring
    region_nms_thresh: float = knob(lo=0.0, hi=1.0)  # IoU of the class-agnostic NMS over the anchors
    max_regions: int = knob(lo=1)  # top-K kept per image after NMS
    num_recall_images: int = knob(lo=0)  # val images also proposed, for recall metrics only
    crops_per_batch: int = knob(lo=1, default=1024)
    images_per_part: int = knob(lo=1, default=256)  # images per resumable part of a shard (a killed task keeps them)
    amp: bool = False  # CLIP under autocast on CUDA: bf16 where the GPU has it, else fp16 (ignored on CPU)
    shard_index: int = knob(lo=0, default=0)
    num_shards: int = knob(lo=1, default=1)


@dataclass(frozen=True, kw_only=True, slots=True)
class ExtractFeaturesConfig(CommonConfig):
    """Stage 03: CLIP embeddings of selected regions and of every base GT box (spec §4)."""

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = CommonConfig.RUNTIME_FIELDS + (
        "shard_index", "num_shards", "crops_per_batch", "images_per_part", "amp")
    UPSTREAM: ClassVar[tuple[str, ...]] = ("finetune_clip", "propose_regions")
    SHARD_DIR: ClassVar[str] = "feats"

    region_source: str = knob(choices=("clip_regions", "random_boxes"))  # random_boxes: ablation (c)
    iou_filter_gt: str = knob(choices=("base", "all"))  # all = the reference, which reads novel GT (a leak)
    iou_thresh: float = knob(lo=0.0, hi=1.0)  # regions overlapping a GT box at least this much are dropped
    subset_rule: str = knob(choices=("drop_base", "random"))  # spec §4: COCO zero-shot / other settings
    num_candidates: int = knob(lo=1)  # drop_base: survivors embedded and classified (1000)
    max_regions: int = knob(lo=1)  # regions kept per image (300 drop_base, 500 random)
    crop_scale: float = knob(lo=1.0)  # r = 1.2
    crops_per_batch: int = knob(lo=1, default=1024)
    images_per_part: int = knob(lo=1, default=256)  # images per resumable part of a shard (a killed task keeps them)
    amp: bool = False  # CLIP under autocast on CUDA: bf16 where the GPU has it, else fp16 (ignored on CPU)
    shard_index: int = knob(lo=0, default=0)
    num_shards: int = knob(lo=1, default=1)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainDetectorConfig(CommonConfig):
    """Stage 04: train the distillation Mask R-CNN on base boxes + CLIP embeddings (spec §5)."""

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = CommonConfig.RUNTIME_FIELDS + (
        "amp", "checkpoint_every", "log_every")

    backbone: str = knob(choices=("toy", "resnet18", "resnet50", "resnet101"))
    pretrained_backbone: bool  # resnet: torchvision ImageNet weights; toy: stage 00's iconic-pretrained one
    trainable_backbone_layers: int = knob(lo=0, hi=5)
    fpn_channels: int = knob(lo=8)
    min_sizes: tuple[int, ...] = knob(lo=16)  # training short sides (one drawn per batch); the last one at test
    max_size: int = knob(lo=16)
    rpn_anchor_sizes: tuple[int, ...] = knob(lo=1)  # side px, one per FPN level P2..P6
    rpn_anchor_ratios: tuple[float, ...] = knob(lo=0.01)  # h / w
    rpn_pre_nms_train: int = knob(lo=1)
    rpn_post_nms_train: int = knob(lo=1)
    rpn_pre_nms_test: int = knob(lo=1)
    rpn_post_nms_test: int = knob(lo=1)
    rpn_batch_size: int = knob(lo=1)
    roi_batch_size: int = knob(lo=1)
    roi_positive_fraction: float = knob(lo=0.0, hi=1.0)
    roi_canonical_scale: int = knob(lo=1)  # box side pooled from FPN level 4 (torchvision/FPN paper: 224)
    roi_sampling_ratio: int = knob(lo=0)  # RoIAlign samples per bin side; 0 = adaptive (the reference)
    roi_aligned: bool  # RoIAlign with the half-pixel shift (the reference: true)
    head_shared_convs: int = knob(lo=0)
    head_branch_convs: int = knob(lo=0)
    head_conv_dim: int = knob(lo=1)
    head_fc_dim: int = knob(lo=1)
    mask_head_convs: int = knob(lo=0)  # 0: no mask branch
    mask_head_dim: int = knob(lo=1)
    temperature_init: float = knob(lo=1.0)  # T of T * cos, learned (100 in the reference)
    classifier_loss: str = knob(choices=("softmax", "seesaw"))
    box_loss_weight: float = knob(lo=0.0)
    distill_weight: float = knob(lo=0.0)  # lambda; 0 trains without distillation (ablation a)
    num_distill_regions: int = knob(lo=0)  # regions sampled per image (with replacement) besides the GT
    optimizer: str = knob(choices=("sgd", "adamw"))
    lr: float = knob(lo=0.0)
    momentum: float = knob(lo=0.0, hi=1.0)
    weight_decay: float = knob(lo=0.0)
    warmup_steps: int = knob(lo=0)
    lr_schedule: str = knob(choices=("step", "cosine"))
    lr_steps: tuple[int, ...] = knob(lo=0)  # x0.1 at each: epochs when epochs is set, else steps
    epochs: int | None = knob(lo=1)  # of the training images after filtering and repeat-factor sampling; or ...
    max_steps: int | None = knob(lo=1)  # ... optimizer steps (exactly one of the two)
    batch_size: int = knob(lo=1)  # images per step, over all processes
    batch_size_per_gpu: int = knob(lo=0, default=0)  # >0: per_gpu x processes per step, lr scaled linearly
    grad_clip: float = knob(lo=0.0)  # max L2 norm; 0 = off
    hflip_prob: float = knob(lo=0.0, hi=1.0)
    repeat_factor_thresh: float = knob(lo=0.0)  # LVIS repeat-factor sampling (1e-3); 0 = off
    replicate: int = knob(lo=0, default=0)  # 0: draws from seed; k > 0: training replicate k (init, order, flips,
    # region samples from (seed, k)); upstream stages are untouched, so only stages 04-05 rerun
    amp: bool = False  # mixed precision on CUDA (ignored on CPU)
    checkpoint_every: int = knob(lo=1, default=500)
    log_every: int = knob(lo=1, default=20)

    def upstream_stages(self) -> tuple[str, ...]:
        toy_weights = ("pretrain_clip",) if self.backbone == "toy" and self.pretrained_backbone else ()
        return (*toy_weights, "finetune_clip", *(("extract_features",) if self.distill_weight > 0 else ()))


def train_batch(cfg: TrainDetectorConfig, world: int) -> tuple[int, float]:
    """(images per step over all ``world`` processes, base learning rate) of a run.

    ``batch_size_per_gpu`` > 0: each process takes that many images, so a step has
    ``batch_size_per_gpu * world`` and ``lr`` is scaled linearly by ``batch_size_per_gpu * world /
    batch_size`` (the linear scaling rule; ``lr`` is the rate tuned for ``batch_size``). Else a step
    has ``batch_size`` images, split evenly over the processes, and ``lr`` as given.

    Raises:
        ConfigError: ``batch_size`` is not a multiple of ``world`` (one line with the fixes).
    """
    if cfg.batch_size_per_gpu > 0:
        batch = cfg.batch_size_per_gpu * world
        return batch, cfg.lr * batch / cfg.batch_size
    if cfg.batch_size % world:
        raise ConfigError(
            f"train_detector.batch_size: {cfg.batch_size} images per step cannot be split evenly over {world} "
            f"processes; use a multiple of {world}, or set train_detector.batch_size_per_gpu (e.g. 1: {world} "
            f"images per step, lr scaled by {world}/{cfg.batch_size})")
    return cfg.batch_size, cfg.lr


@dataclass(frozen=True, kw_only=True, slots=True)
class EvaluateConfig(CommonConfig):
    """Stage 05: swap in base + novel text embeddings, detect on val, COCO/LVIS AP by subset (spec §6)."""

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = CommonConfig.RUNTIME_FIELDS + ("batch_size",)
    UPSTREAM: ClassVar[tuple[str, ...]] = ("finetune_clip", "train_detector")

    vocabulary: str = knob(choices=("all", "proposal"))  # all = base + novel; proposal = spec §5.5 for lvis_405
    box_score_thresh: float = knob(lo=0.0, hi=1.0)  # detections kept above this class probability
    box_nms_thresh: float = knob(lo=0.0, hi=1.0)  # IoU of the per-class NMS of detections
    box_detections_per_img: int = knob(lo=1)  # (300 in the reference; AP at 100 is reported as well)
    image_set: str = knob(choices=("all", "with_gt"))  # val images scored; with_gt: >= 1 box of the split (spec §6)
    batch_size: int = knob(lo=1, default=8)


# knobs renamed so that near-twins of different stages no longer share a word (an old name is one line)
RENAMED: dict[str, dict[str, str]] = {
    "pretrain_clip": {"num_steps": "max_steps"},
    "propose_regions": {"anchor_stride": "region_anchor_stride", "anchor_sides": "region_anchor_sizes",
                        "anchor_ratios": "region_anchor_ratios", "nms_iou": "region_nms_thresh"},
    "train_detector": {"anchor_sizes": "rpn_anchor_sizes", "anchor_ratios": "rpn_anchor_ratios"},
    "evaluate": {"score_thresh": "box_score_thresh", "nms_thresh": "box_nms_thresh",
                 "max_detections": "box_detections_per_img"},
}
PRETRAIN_CLIP = "pretrain_clip"  # the value of clip_pretrained that means "the stage-00 teacher"
STAGE_CONFIGS: dict[str, type[CommonConfig]] = {
    "pretrain_clip": PretrainClipConfig,
    "finetune_clip": FinetuneClipConfig,
    "propose_regions": ProposeRegionsConfig,
    "extract_features": ExtractFeaturesConfig,
    "train_detector": TrainDetectorConfig,
    "evaluate": EvaluateConfig,
}


# ---------------------------------------------------------------------------------------------
# validation


def _describe(tp: Any) -> str:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {int: "an int", float: "a float", bool: "true/false", str: "a string", Path: "a path",
            type(None): "null"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError (no silent conversions beyond int->float)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, key)
        fitting = [a for a in inner if _fits(a, value)]  # e.g. a list of names, else a names file
        if not fitting:
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        return _coerce(fitting[0], value, key)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        return tuple(_coerce(typing.get_args(tp)[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
        Path: isinstance(value, str | Path),
    }[tp]
    if not ok:
        hint = ""
        if tp is float and isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
            hint = " (YAML reads an exponent without a dot as a string: write e.g. 1.0e-4)"
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}{hint}")
    return float(value) if tp is float else Path(value) if tp is Path else value


def _fits(tp: Any, value: Any) -> bool:
    """Whether ``value`` has the plain shape of ``tp`` (a list for a tuple type, a str for str)."""
    if typing.get_origin(tp) is tuple:
        return isinstance(value, list | tuple)
    return isinstance(value, str) if tp is str else True


def _validate_split(cfg: CommonConfig) -> None:
    """A built-in split id with no declaration, or a declared split (style + both name lists)."""
    declared = (cfg.split_style, cfg.base_names, cfg.novel_names)
    if cfg.split_style is None:
        if cfg.base_names is not None or cfg.novel_names is not None:
            raise ConfigError("split_style: null, but base_names / novel_names are set; set split_style to "
                              "coco or lvis to declare a split, or both lists to null")
        if cfg.split not in splits.SPLIT_IDS:
            raise ConfigError(f"split: unknown split {cfg.split!r}; allowed: {', '.join(splits.SPLIT_IDS)} (or "
                              f"declare your own with split_style: coco|lvis, base_names and novel_names)")
        return
    if any(v is None for v in declared[1:]):
        missing = "base_names" if cfg.base_names is None else "novel_names"
        raise ConfigError(f"{missing}: null, but split_style is {cfg.split_style!r}; a declared split needs "
                          f"base_names and novel_names (a list of names, or a names file)")
    if cfg.split in splits.SPLIT_IDS:
        raise ConfigError(f"split: {cfg.split!r} is a built-in split; name the declared split differently "
                          f"(or set split_style, base_names and novel_names to null)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.split):
        raise ConfigError(f"split: got {cfg.split!r}; a declared split's name is a folder name "
                          f"(letters, digits, '_', '-', '.')")
    inline = [v for v in (cfg.base_names, cfg.novel_names) if isinstance(v, tuple)]
    if len(inline) == 2:
        try:
            splits.check_names(*inline)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _validate(cfg: CommonConfig) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        value = _coerce(hints[f.name], getattr(cfg, f.name), f.name)
        object.__setattr__(cfg, f.name, value)
        lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
        if value is None:
            continue
        items = value if isinstance(value, tuple) else (value,)
        if choices and any(v not in choices for v in items):
            raise ConfigError(f"{f.name}: got {value!r}; allowed: {', '.join(map(repr, choices))}")
        if any(lo is not None and v < lo or hi is not None and v > hi for v in items):
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(f"{f.name}: got {value!r}; allowed range {rng}")
    if hasattr(cfg, "epochs") and hasattr(cfg, "max_steps") and (cfg.epochs is None) == (cfg.max_steps is None):
        given = "both are set" if cfg.epochs is not None else "both are null"
        raise ConfigError(f"epochs: give exactly one of epochs and max_steps ({given}: epochs={cfg.epochs!r}, "
                          f"max_steps={cfg.max_steps!r}); set the other to null")
    _validate_split(cfg)
    if hasattr(cfg, "num_shards") and not 0 <= cfg.shard_index < cfg.num_shards:
        raise ConfigError(f"shard_index: got {cfg.shard_index}; allowed 0..{cfg.num_shards - 1} "
                          f"(num_shards = {cfg.num_shards})")
    if getattr(cfg, "clip_pretrained", "") is None and not getattr(cfg, "allow_random_init", False):
        raise ConfigError("clip_pretrained: null means a random-init CLIP; set allow_random_init: true "
                          "to allow it, or name a pretrained tag / checkpoint")
    if hasattr(cfg, "clip_pretrained") and (cfg.clip_pretrained == "pretrain_clip") != (cfg.clip_model is None):
        raise ConfigError("clip_model: must be null exactly when clip_pretrained is pretrain_clip "
                          "(the stage-00 manifest names the model)")


# Fields added after runs were recorded: a manifest's config (strict=False) may lack them; they then
# take their defaults (a built-in split). A params file (strict=True) must still give every key.
ADDED_FIELDS = ("split_style", "base_names", "novel_names", "replicate")
# Added fields whose default leaves config_hash as it was before the field existed, so recorded runs
# stay up to date when the code gains the knob.
HASH_NEUTRAL_DEFAULTS = {"replicate": 0}


def field_names(cls: type[CommonConfig]) -> list[str]:
    """The dataclass fields of a stage config, in declaration order (common fields first)."""
    return [f.name for f in fields(cls)]


def load_config(cls: type[CommonConfig], values: Mapping[str, Any], *, source: str = "parameters",
                strict: bool = False, origins: Mapping[str, str] | None = None) -> CommonConfig:
    """Build a validated config from a mapping.

    Args:
        cls: a stage config class (``STAGE_CONFIGS[stage]``).
        values: the parameters; in a notebook ``globals()`` (only the field names are picked).
        source: where the values come from, for error messages (e.g. ``params/toy_coco.yaml``).
        strict: reject keys that are not fields (the runner's YAML path); False for ``globals()``.
        origins: key -> section name, so errors say ``pretrain_clip.lr`` rather than ``lr``.

    Raises:
        ConfigError: one line naming the source, the key, the value given and what is allowed.
    """
    names = field_names(cls)
    where = (lambda k: f"{origins.get(k, '?')}.{k}") if origins else (lambda k: k)
    if strict:
        unknown = sorted(set(values) - set(names))
        stage = next((s for s, c in STAGE_CONFIGS.items() if c is cls), None)
        renamed = [k for k in unknown if k in RENAMED.get(stage, {})]
        if renamed:
            raise ConfigError(f"{source}: {where(renamed[0])} is now called {RENAMED[stage][renamed[0]]} "
                              f"(each knob's name says whose it is); rename it")
        if unknown:
            raise ConfigError(f"{source}: unknown key {where(unknown[0])}; allowed keys: {', '.join(names)}")
    missing = [n for n in names if n not in values and (strict or n not in ADDED_FIELDS)]
    if missing:
        raise ConfigError(f"{source}: missing key {missing[0]}"
                          f"{' (and ' + str(len(missing) - 1) + ' more)' if len(missing) > 1 else ''}; "
                          f"required keys: {', '.join(names)}")
    try:
        return cls(**{n: values[n] for n in names if n in values})
    except ConfigError as e:
        key, _, rest = str(e).partition(":")
        raise ConfigError(f"{source}: {where(key.split('[')[0]) if origins else key}:{rest}") from None


def config_dict(cfg: CommonConfig) -> dict[str, Any]:
    """The config as JSON-ready primitives (paths as strings, tuples as lists)."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in fields(cfg)}


def _plain(v: Any) -> Any:
    return str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v


def config_hash(cfg: CommonConfig) -> str:
    """``sha256:`` of the config without its RUNTIME_FIELDS: what decides the artefacts' content."""
    d = config_dict(cfg)
    return artefacts.hash_json({k: v for k, v in d.items() if k not in type(cfg).RUNTIME_FIELDS
                                and not (k in HASH_NEUTRAL_DEFAULTS and v == HASH_NEUTRAL_DEFAULTS[k])})


# ---------------------------------------------------------------------------------------------
# lineage (lives in lineage.py; these names stay for callers of the first release)


def data_fingerprint(cfg: CommonConfig) -> str:
    """``lineage.data_fingerprint``: hash of the annotation files (and the toy world's ``world.json``)."""
    from ezsd_core import lineage  # lineage imports this module

    return lineage.data_fingerprint(cfg)


def upstream_hashes(cfg: CommonConfig) -> dict[str, str]:
    """``lineage.upstream_hashes``: upstream artefact hashes, ``data`` and checkpoint files given as inputs."""
    from ezsd_core import lineage

    return lineage.upstream_hashes(cfg)


# ---------------------------------------------------------------------------------------------
# params files


def read_params(path: Path | str) -> dict[str, dict[str, Any]]:
    """Read ``params/<split>.yaml`` with the safe loader and check its sections.

    Returns:
        ``{"common": {...}, "<stage>": {...}, ...}``.

    Raises:
        ConfigError: unreadable YAML, no ``common`` section, or a section that is not a stage id.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read params ({' '.join(str(e).split())})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("common"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'common' section")
    for section, body in doc.items():
        if section != "common" and section not in STAGE_CONFIGS:
            raise ConfigError(f"{path}: unknown section {section!r}; allowed: common, "
                              f"{', '.join(STAGE_CONFIGS)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping of key: value")
    return doc


def parse_override(text: str) -> tuple[str, str, Any]:
    """``'propose_regions.shard_index=3'`` -> ``('propose_regions', 'shard_index', 3)`` (value read as YAML).

    Raises:
        ConfigError: when the text is not ``section.key=value``.
    """
    m = re.fullmatch(r"([a-z_]+)\.([a-z0-9_]+)=(.*)", text.strip(), flags=re.S)
    if not m:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. pretrain_clip.lr=1.0e-3")
    try:
        value = yaml.safe_load(m.group(3)) if m.group(3) else ""
    except yaml.YAMLError:
        value = m.group(3)
    return m.group(1), m.group(2), value


def stage_config(doc: Mapping[str, Mapping[str, Any]], stage: str, *, source: str,
                 overrides: Sequence[str] = ()) -> CommonConfig:
    """The validated config of ``stage``: common + stage section + ``--set`` overrides.

    Raises:
        ConfigError: unknown stage, a stage the file has no section for, a bad override or a bad value.
    """
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"{source}: unknown stage {stage!r}; allowed: {', '.join(STAGE_CONFIGS)}")
    if stage not in doc:
        present = [s for s in STAGE_CONFIGS if s in doc]
        raise ConfigError(f"{source}: no section {stage!r}; stages in this file: {', '.join(present) or 'none'}")
    values = {**doc["common"], **doc[stage]}
    origins = {**{k: "common" for k in doc["common"]}, **{k: stage for k in doc[stage]}}
    set_by: dict[str, str] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        if section != "common" and section not in STAGE_CONFIGS:
            raise ConfigError(f"--set {text}: unknown section {section!r}; allowed: common, "
                              f"{', '.join(STAGE_CONFIGS)}")
        allowed = field_names(CommonConfig if section == "common" else STAGE_CONFIGS[section])
        if section != "common":
            allowed = [k for k in allowed if k not in field_names(CommonConfig)]
        if key in RENAMED.get(section, {}):
            raise ConfigError(f"--set {text}: {section}.{key} is now called {RENAMED[section][key]}")
        if key not in allowed:
            raise ConfigError(f"--set {text}: unknown key {section}.{key}; allowed keys: {', '.join(allowed)}")
        if section in ("common", stage):  # others are for other stages of the same command
            values[key], origins[key], set_by[f"{section}.{key}"] = value, section, text
    try:
        return load_config(STAGE_CONFIGS[stage], values, source=source, strict=True, origins=origins)
    except ConfigError as e:  # a bad --set value is named as such, not as the params file's
        where, _, rest = str(e).removeprefix(f"{source}: ").partition(":")
        if where in set_by:
            raise ConfigError(f"--set {set_by[where]}: {where}:{rest}") from None
        raise
