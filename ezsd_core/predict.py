"""Open-vocabulary inference: detect any category names on any images with a trained run.

    predictor = Predictor.from_run("runs/toy_coco")
    results = predictor(["a.png", "b.png"], ["heart", "star", "kite"])

The names are embedded with the run's own (LayerNorm-tuned) CLIP and the run's prompt templates,
then swapped into the detector's classifier, exactly as stage 05 does with base + novel names.
Reads: ``01_finetune_clip`` and ``04_train_detector`` of a run. Layer 4: imports layers 0-2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ezsd_core import artefacts, clip, data, detector, runtime, trained
from ezsd_core.config import FinetuneClipConfig, load_config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class Prediction:
    """Detections on one image.

    Attributes:
        image: the image path.
        boxes: (P, 4) float32 XYXY absolute pixels; scores: (P,); names: P category names.
        masks: (P, H, W) bool, or None for a detector without masks or a Predictor built with masks=False.
    """

    image: str
    boxes: Tensor
    scores: Tensor
    names: list[str]
    masks: Tensor | None

    def to_json(self) -> dict:
        """``{"image", "detections": [{"name", "score", "bbox": [x1, y1, x2, y2]}]}`` (no masks)."""
        return {"image": self.image, "detections": [
            {"name": n, "score": round(float(s), 4), "bbox": [round(v, 2) for v in b]}
            for n, s, b in zip(self.names, self.scores.tolist(), self.boxes.tolist())]}


def image_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Files and folders (their images, sorted) -> image paths.

    Raises:
        ValueError: an input that does not exist, or no image at all.
    """
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            out += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            out.append(item)
        else:
            raise ValueError(f"images: {item} does not exist")
    if not out:
        raise ValueError(f"images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return out


def vocabulary(names: Sequence[str]) -> list[str]:
    """Category names as given (``--names heart,star``), stripped, empty ones dropped.

    Raises:
        ValueError: no name, or a name given twice (CLIP's tokenizer ignores case and repeated
            spaces, so ``Heart`` and ``heart`` are the same class): one line naming it.
    """
    out = [" ".join(n.split()) for n in names if n.strip()]
    if not out:
        raise ValueError("names: give at least one category name, e.g. --names 'heart,star'")
    seen: dict[str, str] = {}
    for n in out:
        if n.lower() in seen:
            raise ValueError(f"names: {n!r} is given twice (as {seen[n.lower()]!r} too); each category once, "
                             f"e.g. --names {','.join(dict.fromkeys(x.lower() for x in out))}")
        seen[n.lower()] = n
    return out


class Predictor:
    """A trained run's detector and CLIP, ready to detect any names. Build with ``from_run``."""

    def __init__(self, model: detector.EzsdDetector, text_model: clip.Clip, templates: Sequence[str],
                 device: torch.device, masks: bool = False):
        self.model, self.text_model, self.templates, self.device = model, text_model, tuple(templates), device
        self.masks = masks

    @classmethod
    def from_run(cls, run_dir: Path | str, *, device: str = "cpu", box_score_thresh: float = 0.3,
                 box_detections_per_img: int = 100, masks: bool = False, box_nms_thresh: float | None = None,
                 templates: Sequence[str] | None = None) -> Predictor:
        """Load a run's detector (stage 04) and tuned CLIP (stage 01).

        ``box_score_thresh``, ``box_nms_thresh`` (per-class NMS IoU; None: the trained spec's) and
        ``box_detections_per_img`` mean what stage 05's knobs of the same names mean. ``templates``: prompt
        templates whose embeddings are averaged per name (a prompt ensemble; None: the run's own).

        Masks only when asked: ``masks=True`` also pastes (P, H, W) masks at the image's full size (a
        3000 x 3000 image needs ~3.6 GB for 100 float masks); the default keeps memory bounded by the
        resized image.

        Raises:
            MissingArtefactError: the run has no complete ``train_detector`` (or ``finetune_clip``).
        """
        run_dir = Path(run_dir)
        dev = runtime.resolve_device(device)
        model, _ = trained.load_trained_detector(run_dir, dev, box_score_thresh=box_score_thresh,
                                                 box_nms_thresh=box_nms_thresh,
                                                 box_detections_per_img=box_detections_per_img)
        finetune = artefacts.require_complete(run_dir, "finetune_clip")
        text_model, _ = clip.load_tuned(artefacts.stage_dir(run_dir, "finetune_clip"), dev)
        templates = tuple(templates or load_config(FinetuneClipConfig, finetune["config"]).prompt_templates)
        if bad := [t for t in templates if "{}" not in t]:
            raise ValueError(f"templates: {bad[0]!r} has no '{{}}' for the name, e.g. 'a photo of a {{}}'")
        return cls(model, text_model, templates, dev, masks=masks)

    @torch.no_grad()
    def __call__(self, images: Sequence[str | Path], names: Sequence[str]) -> list[Prediction]:
        """Detect ``names`` on each image.

        Args:
            images: image files (any size; RGB or convertible).
            names: category names, any number, e.g. ["heart", "star"].

        Raises:
            ValueError: an empty vocabulary, a name given twice, or an unreadable image (named).
        """
        names = vocabulary(names)
        self.model.set_vocabulary(clip.encode_texts(self.text_model, names, self.templates))
        out = []
        for path in map(Path, images):
            image = data.read_image(path).float().div(255).to(self.device)  # ValueError naming the file
            det = self.model([image], return_detections=True, return_masks=self.masks).detections[0]
            masks = det.get("masks")
            out.append(Prediction(image=str(path), boxes=det["boxes"].cpu(), scores=det["scores"].cpu(),
                                  names=[names[int(k) - 1] for k in det["labels"].cpu()],
                                  masks=None if masks is None else masks[:, 0].cpu() > 0.5))
        return out



def names_file(path: Path | str) -> list[str]:
    """Category names from a text file, one a line (blank and ``#`` lines skipped), checked by ``vocabulary``.

    Raises:
        ValueError: an unreadable file, no name, or a name twice (one line).
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"names-file: cannot read {path} ({e.strerror or e})") from None
    return vocabulary([x for x in lines if not x.lstrip().startswith("#")])


def draw_overlay(prediction: Prediction, out_dir: Path | str) -> Path:
    """Write ``<out_dir>/<image stem>.png``: the image with each box drawn and labelled ``name score``.

    Boxes are XYXY absolute pixels of the image (``Prediction.boxes``). Returns the PNG's path.
    """
    from PIL import Image, ImageDraw

    out = Path(out_dir) / f"{Path(prediction.image).stem}.png"
    with Image.open(prediction.image) as im:
        canvas = im.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for box, score, name in zip(prediction.boxes.tolist(), prediction.scores.tolist(), prediction.names):
        draw.rectangle(box, outline=(255, 40, 40), width=max(1, round(min(canvas.size) / 200)))
        draw.text((box[0] + 2, box[1] + 1), f"{name} {score:.2f}", fill=(255, 255, 0))
    with artefacts.atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out
