"""One loader rebuilds stage 04's detector for stage 05, ``ezsd predict`` and export."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_detector import _spec

from ezsd_core import artefacts, detector, shards, trained

SPEC = {**vars(_spec()), "box_score_thresh": 0.05, "box_detections_per_img": 100}  # test_detector's small spec


def _fake_run(root: Path) -> tuple[detector.EzsdDetector, detector.DetectorSpec]:
    """A run with stage 04's two files written the way stage 04 writes them, and stage 01's text embeddings."""
    torch.manual_seed(0)
    spec = detector.DetectorSpec(**SPEC)
    model = detector.build_detector(spec, torch.nn.functional.normalize(torch.randn(3, 16), dim=-1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init: the loader must read the weights
    out = artefacts.stage_dir(root, "train_detector")
    out.mkdir(parents=True)
    shards.save_tensors(out / "model.safetensors", model.state_dict(), {"stage": "train_detector"})
    artefacts.write_manifest(out, stage="train_detector", split="smoke", config={}, config_hash="sha256:x",
                             upstream={}, outputs=["model.safetensors"], summary={}, started_at=artefacts.utc_now(),
                             extra={"detector": asdict(spec)})
    tuned = artefacts.stage_dir(root, "finetune_clip")
    tuned.mkdir(parents=True)
    save_file({"all": torch.nn.functional.normalize(torch.randn(5, 16), dim=-1),
               "all_category_ids": torch.tensor([1, 2, 3, 4, 5])}, str(tuned / "text_embeds.safetensors"))
    return model.eval(), spec


def test_loader_rebuilds_the_trained_weights_with_the_inference_settings_asked_for(tmp_path: Path) -> None:
    model, spec = _fake_run(tmp_path)
    loaded, got = trained.load_trained_detector(tmp_path, "cpu", box_score_thresh=0.0, box_detections_per_img=7)
    assert got == detector.DetectorSpec(**{**SPEC, "box_score_thresh": 0.0, "box_detections_per_img": 7})
    assert not loaded.training and got.min_size == (64,)
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert loaded.roi_heads.detections_per_img == 7 and loaded.roi_heads.score_thresh == 0.0
    recorded, _ = trained.load_trained_detector(tmp_path)
    assert recorded.roi_heads.score_thresh == 0.05 and recorded.roi_heads.detections_per_img == 100
    image = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a = recorded(image, return_detections=True).detections[0]
        b = model(image, return_detections=True).detections[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_run_vocabulary_is_swapped_in_and_unknown_ones_are_named(tmp_path: Path) -> None:
    _fake_run(tmp_path)
    loaded, _ = trained.load_trained_detector(tmp_path)
    ids = trained.set_run_vocabulary(loaded, tmp_path, "all")
    assert ids.tolist() == [1, 2, 3, 4, 5] and loaded.roi_heads.box_predictor.text_embeds.shape == (5, 16)
    with pytest.raises(ValueError, match="vocabulary: got 'proposal'; stage 01 wrote: all"):
        trained.set_run_vocabulary(loaded, tmp_path, "proposal")
    with pytest.raises(ValueError, match="lr: not an inference setting"):
        trained.spec_from_manifest({"detector": {**SPEC, "min_size": [64]}}, lr=0.1)


def test_a_run_recorded_under_the_first_knob_names_still_loads(tmp_path: Path) -> None:
    model, spec = _fake_run(tmp_path)
    path = artefacts.stage_dir(tmp_path, "train_detector") / "manifest.json"
    manifest = artefacts.read_manifest(path.parent)
    first = {"rpn_anchor_sizes": "anchor_sizes", "rpn_anchor_ratios": "anchor_ratios",
             "box_score_thresh": "score_thresh", "box_nms_thresh": "nms_thresh",
             "box_detections_per_img": "detections_per_img"}
    manifest["detector"] = {first.get(k, k): v for k, v in manifest["detector"].items()}
    assert trained.spec_from_manifest(manifest) == spec
