"""``ezsd export``: a trained run's detector with a frozen vocabulary, as ONNX or TorchScript.

The names are embedded once with the run's tuned CLIP and prompt templates (as ``ezsd predict`` does)
and fixed in the classifier; the exported graph takes one (3, H, W) float image in [0, 1] (any H, W)
and returns ``boxes`` (P, 4) float32 XYXY in the image's pixels, ``scores`` (P,) float32 and
``labels`` (P,) int64, an index into the names (0-based). Masks are not exported. The names are
written beside the model (``<file>.names.json``) and, for ONNX, in its ``metadata_props``.
The graph is traced: it assumes the RPN keeps ``rpn_post_nms_test`` proposals, as it does on any
image that is not tiny. Reads: ``01_finetune_clip`` and ``04_train_detector`` of a run.
Layer 4: imports layers 0-2 and predict.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ezsd_core import artefacts, clip, predict

FORMATS = ("onnx", "torchscript")


class FrozenVocabularyDetector(nn.Module):
    """A detector whose classifier is fixed to K names: image (3, H, W) in [0, 1] -> boxes, scores, labels."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(P, 4) XYXY absolute boxes, (P,) scores, (P,) int64 labels 0..K-1 (index into the names)."""
        det = self.model([image], return_detections=True, return_masks=False).detections[0]
        return det["boxes"], det["scores"], det["labels"] - 1


def names_from(names: str | None, names_file: Path | str | None) -> list[str]:
    """``--names a,b`` or ``--names-file F`` (one name a line; blank and ``#`` lines skipped), checked.

    Raises:
        ValueError: both or neither given, an unreadable file, no name or a name twice (one line).
    """
    if (names is None) == (names_file is None):
        raise ValueError("names: give either --names 'a,b' or --names-file FILE (one name a line), not both")
    return predict.names_file(names_file) if names_file is not None else predict.vocabulary(names.split(","))


def frozen_detector(run: Path | str, names: Sequence[str], *, templates: Sequence[str] | None = None,
                    box_score_thresh: float = 0.3, box_nms_thresh: float = 0.5, box_detections_per_img: int = 100
                    ) -> FrozenVocabularyDetector:
    """The run's detector (``Predictor.from_run``) classifying ``names`` only, on the CPU, in eval mode.

    Args:
        templates: prompt templates averaged per name (default: the run's stage-01 templates).
    """
    predictor = predict.Predictor.from_run(run, device="cpu", box_score_thresh=box_score_thresh,
                                           box_nms_thresh=box_nms_thresh,
                                           box_detections_per_img=box_detections_per_img, masks=False)
    with torch.no_grad():
        text = clip.encode_texts(predictor.text_model, list(names), tuple(templates or predictor.templates))
    predictor.model.set_vocabulary(text)
    return FrozenVocabularyDetector(predictor.model).eval()


def example_image(model: FrozenVocabularyDetector) -> Tensor:
    """A random (3, S, 4S/3) image at the detector's test size, to trace with."""
    side = int(model.model.spec.min_size[-1])
    return torch.rand(3, side, side * 4 // 3, generator=torch.Generator().manual_seed(0))


def export(run: Path | str, names: Sequence[str], out: Path | str, *, fmt: str = "onnx",
           templates: Sequence[str] | None = None, box_score_thresh: float = 0.3, box_nms_thresh: float = 0.5,
           box_detections_per_img: int = 100) -> Path:
    """Write the run's detector with a frozen vocabulary to ``out`` (atomically) and ``<out>.names.json``.

    Args:
        run: ``runs/<split>`` with complete ``finetune_clip`` and ``train_detector`` stages.
        names: the K category names (``labels`` index them).
        fmt: ``onnx`` (opset 17, dynamic H and W) or ``torchscript`` (``torch.jit.trace``).

    Returns:
        ``out``.

    Raises:
        ValueError: an unknown format (one line).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: got {fmt!r}; allowed: {', '.join(FORMATS)}")
    model = frozen_detector(run, names, templates=templates, box_score_thresh=box_score_thresh,
                            box_nms_thresh=box_nms_thresh, box_detections_per_img=box_detections_per_img)
    x, out = example_image(model), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"names": list(names), "inputs": "image (3, H, W) float32 in [0, 1]",
            "outputs": "boxes (P, 4) XYXY pixels, scores (P,), labels (P,) int64 index into names",
            "box_score_thresh": box_score_thresh, "box_nms_thresh": box_nms_thresh,
            "box_detections_per_img": box_detections_per_img}
    with artefacts.atomic_path(out) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values it freezes
        if fmt == "onnx":
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=17, input_names=["image"],
                              output_names=["boxes", "scores", "labels"],
                              dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "num"},
                                            "scores": {0: "num"}, "labels": {0: "num"}})
            _add_metadata(Path(tmp), meta)
        else:
            traced = torch.jit.trace(model, (x,), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"names.json": json.dumps(meta)})
    artefacts.atomic_write_json(Path(f"{out}.names.json"), meta)
    return out


def _add_metadata(path: Path, meta: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "ezsd", json.dumps(meta)
    onnx.save(proto, str(path))
