"""The trained detector of a run, rebuilt one way for every reader (stage 05, ``ezsd predict``, export).

Role: stage 04 records its ``DetectorSpec`` in its manifest and its weights in
``04_train_detector/model.safetensors``; ``load_trained_detector`` rebuilds exactly that model, with
the inference knobs (score threshold, NMS IoU, detections per image) a reader asks for, and
``set_run_vocabulary`` swaps in one of stage 01's text-embedding vocabularies.
Reads: ``04_train_detector`` (and ``01_finetune_clip`` for vocabularies). Layer 2: imports
artefacts (layer 0) and detector.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ezsd_core import artefacts, detector

# DetectorSpec fields as stage 04 recorded them before the knob vocabulary (runs on disk keep loading)
OLD_SPEC_NAMES = {"anchor_sizes": "rpn_anchor_sizes", "anchor_ratios": "rpn_anchor_ratios",
                  "score_thresh": "box_score_thresh", "nms_thresh": "box_nms_thresh",
                  "detections_per_img": "box_detections_per_img"}
INFERENCE_FIELDS = ("box_score_thresh", "box_nms_thresh", "box_detections_per_img")  # what a reader may change


def spec_from_manifest(manifest: dict[str, Any], **inference: Any) -> detector.DetectorSpec:
    """The DetectorSpec stage 04 recorded (``manifest["detector"]``), with inference knobs replaced.

    Args:
        manifest: stage 04's manifest.
        inference: any of ``INFERENCE_FIELDS``; None values keep the recorded ones.

    Raises:
        ValueError: a key that is not an inference knob (training-time fields cannot change after training).
    """
    unknown = sorted(set(inference) - set(INFERENCE_FIELDS))
    if unknown:
        raise ValueError(f"{unknown[0]}: not an inference setting of a trained detector; allowed: "
                         f"{', '.join(INFERENCE_FIELDS)}")
    recorded = {OLD_SPEC_NAMES.get(k, k): v for k, v in manifest["detector"].items()}  # runs of the first names
    # JSON has lists where the spec has tuples (min_size, rpn_anchor_sizes, rpn_anchor_ratios): the spec stays hashable
    spec = detector.DetectorSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
    return dataclasses.replace(spec, **{k: v for k, v in inference.items() if v is not None})


def load_trained_detector(run_dir: Path | str, device: str | torch.device = "cpu", *,
                          box_score_thresh: float | None = None, box_nms_thresh: float | None = None,
                          box_detections_per_img: int | None = None
                          ) -> tuple[detector.EzsdDetector, detector.DetectorSpec]:
    """Stage 04's detector of a run, in eval mode on ``device``, classifying its training (base) vocabulary.

    Args:
        run_dir: ``runs/<split>`` (its ``04_train_detector`` must be complete).
        device: where to put the model.
        box_score_thresh, box_nms_thresh, box_detections_per_img: inference settings; None keeps what stage 04
            recorded (0.05, 0.5, 100).

    Returns:
        The model (its classifier holds the (K, D) base text embeddings it was trained with; swap
        with ``set_vocabulary`` or ``set_run_vocabulary``) and the spec it was built from.

    Raises:
        MissingArtefactError: the run has no complete ``train_detector``.
    """
    from safetensors.torch import load_file

    manifest = artefacts.require_complete(run_dir, "train_detector")
    spec = spec_from_manifest(manifest, box_score_thresh=box_score_thresh, box_nms_thresh=box_nms_thresh,
                              box_detections_per_img=box_detections_per_img)
    state = load_file(str(artefacts.stage_dir(run_dir, "train_detector") / "model.safetensors"))
    model = detector.build_detector(spec, state["roi_heads.box_predictor.text_embeds"])
    model.load_state_dict(state)
    return model.to(device).eval(), spec


def set_run_vocabulary(model: detector.EzsdDetector, run_dir: Path | str, vocabulary: str) -> Tensor:
    """Classify against one of stage 01's vocabularies (``base``, ``novel``, ``all``, ``proposal``).

    Returns:
        The (K,) int64 dataset category ids of the model's labels 1..K.

    Raises:
        ValueError: a vocabulary stage 01 did not write.
    """
    from safetensors.torch import load_file

    text = load_file(str(artefacts.stage_dir(run_dir, "finetune_clip") / "text_embeds.safetensors"))
    if vocabulary not in text:
        known = sorted(k for k in text if not k.endswith("_category_ids"))
        raise ValueError(f"vocabulary: got {vocabulary!r}; stage 01 wrote: {', '.join(known)}")
    model.set_vocabulary(text[vocabulary])
    return text[f"{vocabulary}_category_ids"]
