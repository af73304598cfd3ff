"""``ezsd export`` (ONNX run by onnxruntime, TorchScript) matches the PyTorch detector with the same frozen
vocabulary; ``ezsd predict`` takes a names file, prompt ensembles, evaluate's NMS knob and draws overlays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from ezsd_core import artefacts, cli, clip, data, export, predict

pytestmark = pytest.mark.e2e
NAMES = ["heart", "star", "kite"]


@pytest.fixture(scope="module")
def trained(smoke_stages, tmp_path_factory) -> tuple[Path, Path]:
    from conftest import run_stages_in_process

    world, stages_root = smoke_stages
    run_root = tmp_path_factory.mktemp("trained-export") / "smoke"
    for stage in ("pretrain_clip", "finetune_clip", "propose_regions", "extract_features"):
        shutil.copytree(artefacts.stage_dir(stages_root, stage), artefacts.stage_dir(run_root, stage))
    run_stages_in_process(world, run_root, ["train_detector"])
    return world, run_root


def _images(world: Path) -> list[Path]:
    return predict.image_paths([world / "coco/val"])


def test_onnx_export_matches_pytorch_boxes_and_scores(trained, tmp_path: Path, capsys) -> None:
    import onnx
    import onnxruntime as ort

    world, run_root = trained
    out = tmp_path / "det.onnx"
    code = cli.main(["export", "--run", str(run_root), "--names", ",".join(NAMES), "--format", "onnx",
                     "--out", str(out), "--box-score-thresh", "0.0"])
    assert code == 0 and out.is_file(), capsys.readouterr().err
    meta = json.loads(Path(f"{out}.names.json").read_text())
    assert meta["names"] == NAMES
    assert json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["ezsd"])["names"] == NAMES
    reference = export.frozen_detector(run_root, NAMES, box_score_thresh=0.0)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for path in _images(world)[:3]:
        image = data.read_image(path).float().div(255)
        boxes, scores, labels = session.run(None, {"image": image.numpy()})
        with torch.no_grad():
            rb, rs, rl = reference(image)
        assert len(rb) > 0 and boxes.shape == tuple(rb.shape)
        np.testing.assert_allclose(boxes, rb.numpy(), atol=1e-3)
        np.testing.assert_allclose(scores, rs.numpy(), atol=1e-5)
        assert labels.tolist() == rl.tolist() and set(labels.tolist()) <= {0, 1, 2}


def test_torchscript_export_matches_pytorch(trained, tmp_path: Path) -> None:
    world, run_root = trained
    out = export.export(run_root, NAMES, tmp_path / "det.pt", fmt="torchscript", box_score_thresh=0.0)
    scripted = torch.jit.load(str(out))
    reference = export.frozen_detector(run_root, NAMES, box_score_thresh=0.0)
    image = data.read_image(_images(world)[0]).float().div(255)
    with torch.no_grad():
        got, want = scripted(image), reference(image)
    for g, w in zip(got, want):
        assert torch.allclose(g.float(), w.float(), atol=1e-4)


def test_export_names_file_and_bad_arguments(trained, tmp_path: Path, capsys) -> None:
    _, run_root = trained
    (tmp_path / "names.txt").write_text("# my names\nheart\nstar\n")
    assert export.names_from(None, tmp_path / "names.txt") == ["heart", "star"]
    both = ["--names", "a", "--names-file", str(tmp_path / "names.txt")]
    assert cli.main(["export", "--run", str(run_root), *both]) == 2
    assert capsys.readouterr().err.strip() == ("ezsd: error: names: give either --names 'a,b' or --names-file FILE "
                                               "(one name a line), not both")


def test_predict_names_file_ensemble_nms_and_overlays(trained, tmp_path: Path) -> None:
    world, run_root = trained
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    templates = ["a photo of a {}", "a drawing of a {}"]
    code = cli.main(["predict", "--run", str(run_root), "--images", str(world / "coco/val"), "--names-file",
                     str(tmp_path / "names.txt"), "--template", templates[0], "--template", templates[1],
                     "--box-score-thresh", "0.0", "--box-nms-thresh", "0.2", "--overlay", str(tmp_path / "png"),
                     "--out", str(tmp_path / "dets.json")])
    assert code == 0
    payload = json.loads((tmp_path / "dets.json").read_text())
    images = _images(world)
    assert [p["image"] for p in payload] == [str(p) for p in images]
    for p, path in zip(payload, images):
        dets = p["detections"]
        assert dets and {d["name"] for d in dets} <= set(NAMES)
        for name in NAMES:  # per-name NMS at 0.2: no two kept boxes of a name overlap more
            b = torch.tensor([d["bbox"] for d in dets if d["name"] == name]).reshape(-1, 4)
            iou = box_iou(b, b).fill_diagonal_(0)
            assert (iou <= 0.2 + 1e-3).all()
        png = np.asarray(Image.open(tmp_path / "png" / f"{path.stem}.png").convert("RGB"))
        orig = data.read_image(path).permute(1, 2, 0).numpy()
        assert png.shape == orig.shape and (png != orig).any(), "boxes are drawn on the image"
        x1, y1 = (int(round(v)) for v in dets[-1]["bbox"][:2])
        assert (png[min(y1, png.shape[0] - 1), :, 0] == 255).any(), "a red box edge on the box's first row"


def test_prompt_ensemble_averages_the_templates(trained) -> None:
    world, run_root = trained
    templates = ("a photo of a {}", "a drawing of a {}")
    predictor = predict.Predictor.from_run(run_root, box_score_thresh=0.0, templates=templates)
    predictor(_images(world)[:1], NAMES)
    got = predictor.model.roi_heads.box_predictor.text_embeds
    with torch.no_grad():
        singles = [clip.encode_texts(predictor.text_model, NAMES, [t]) for t in templates]
        each = [clip.encode_texts(predictor.text_model, NAMES, [t]) for t in templates[:1]]
    mean = torch.nn.functional.normalize(sum(singles), dim=-1)
    assert torch.allclose(got, mean, atol=1e-5) and not torch.allclose(got, each[0], atol=1e-3)
