"""Stage 00 pieces that need no training: iconic ids in the split's numbering, the contrastive loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ezsd_core import data, toydraw, toyworld
from ezsd_core.stages import pretrain_clip


@pytest.mark.parametrize("kind", ["web", "iconic"])
def test_pictures_are_labelled_by_name_whatever_the_split_numbering(smoke_world: Path, kind: str) -> None:
    images, ids, captions = pretrain_clip.load_pictures(smoke_world, kind, "train", 16)
    assert images.shape == (len(captions), 3, 16, 16) and images.dtype == torch.uint8
    assert ((ids < 0).sum() > 0) == (kind == "web")  # the clutter pictures
    for k, caption in zip(ids.tolist(), captions):
        if k >= 0:  # indices into the web's vocabulary, not a split's ids
            assert toyworld.CATEGORY_NAMES[k] in caption.split()
        else:  # one class per stuff kind, the kind the caption names (never the legacy "no category")
            assert k != pretrain_clip.NO_CATEGORY
            assert toydraw.STUFF_KINDS[-2 - k] in caption.split()
    for ann, name in (("coco/annotations/instances_val.json", "toy_coco"), ("lvis/annotations/lvis_v1_val.json",
                                                                             "toy_lvis")):
        split = data.read_split(smoke_world / ann, name)  # the LVIS world numbers 1..24, COCO sparsely
        assert set(split.names) <= set(toyworld.CATEGORY_NAMES)


def test_contrastive_loss_treats_same_category_captions_as_positives() -> None:
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0, 1]]), dim=1)
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.01], [0, 1]]), dim=1)
    right = pretrain_clip.contrastive_loss(img, txt, torch.tensor([5, 7]), torch.tensor([5, 5, 7]), torch.tensor(50.0))
    wrong = pretrain_clip.contrastive_loss(img, txt, torch.tensor([5, 7]), torch.tensor([5, 7, 7]), torch.tensor(50.0))
    assert right < 0.8 < wrong  # two near-identical captions of one category: both positives, no penalty
