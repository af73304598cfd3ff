"""Stage 00 pieces that need no training: iconic ids in the split's numbering, the contrastive loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ezsd_core import data
from ezsd_core.stages import pretrain_clip


@pytest.mark.parametrize("ann", ["coco/annotations/instances_val.json", "lvis/annotations/lvis_v1_val.json"])
def test_iconic_ids_are_translated_into_the_splits_numbering(smoke_world: Path, ann: str) -> None:
    split = data.read_split(smoke_world / ann, "toy_lvis" if ann.startswith("lvis") else "toy_coco")
    images, ids, captions = pretrain_clip.load_iconic(smoke_world, "train", 16, split)
    assert images.shape == (len(captions), 3, 16, 16) and images.dtype == torch.uint8
    assert (ids == pretrain_clip.NO_CATEGORY).sum() > 0  # the clutter pictures
    for cid, caption in zip(ids.tolist(), captions):
        if cid != pretrain_clip.NO_CATEGORY:  # the LVIS world numbers categories 1..24, COCO sparsely
            assert split.name_of(cid) in caption.split()


def test_contrastive_loss_treats_same_category_captions_as_positives() -> None:
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0, 1]]), dim=1)
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.01], [0, 1]]), dim=1)
    right = pretrain_clip.contrastive_loss(img, txt, torch.tensor([5, 7]), torch.tensor([5, 5, 7]), torch.tensor(50.0))
    wrong = pretrain_clip.contrastive_loss(img, txt, torch.tensor([5, 7]), torch.tensor([5, 7, 7]), torch.tensor(50.0))
    assert right < 0.8 < wrong  # two near-identical captions of one category: both positives, no penalty
