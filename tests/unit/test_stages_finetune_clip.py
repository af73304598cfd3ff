from __future__ import annotations

import math
import shutil

import torch

from ezsd_core import clip, config
from ezsd_core.stages import finetune_clip as st


def test_bce_loss_is_the_mean_over_crops_and_classes() -> None:
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=-1)
    labels = torch.tensor([0, 2])
    logits = 10.0 * img @ txt.T
    sig = torch.sigmoid(logits)
    onehot = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    manual = -(onehot * sig.log() + (1 - onehot) * (1 - sig).log()).mean()
    assert torch.allclose(st.classification_loss(img, txt, labels, 10.0, "bce"), manual)
    ce = -(logits.log_softmax(1)[torch.arange(2), labels]).mean()
    assert torch.allclose(st.classification_loss(img, txt, labels, 10.0, "softmax"), ce)


def test_accuracy_table_by_subset_and_size() -> None:
    pred = torch.tensor([0, 1, 2, 2])
    labels = torch.tensor([0, 2, 2, 1])
    novel = torch.tensor([False, True, True, False])
    areas = torch.tensor([100.0, 2000.0, 10000.0, 500.0])
    t = st.accuracy_table(pred, labels, novel, areas)
    assert t["top1_all"] == 0.5 and t["top1_base"] == 0.5 and t["top1_novel"] == 0.5
    assert t["top1_small"] == 0.5 and t["top1_medium"] == 0.0 and t["top1_large"] == 1.0


def test_a_training_step_changes_only_layernorms() -> None:
    torch.manual_seed(0)
    model = clip.build_clip("ezsd-tiny-cnn", None, allow_random_init=True)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    clip.set_trainable_layernorms(model.model, ["image", "text"])
    params = [p for p in model.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1)
    emb = torch.nn.functional.normalize(clip.encode_images(model, torch.randn(6, 3, 32, 32)), dim=-1)
    text = clip.encode_texts(model, ["circle", "star", "ring"], ["a photo of a {}"])
    st.classification_loss(emb, text, torch.tensor([0, 1, 2, 0, 1, 2]), model.logit_scale, "bce").backward()
    opt.step()
    lns = set(clip.layernorm_parameters(model.model))
    changed = {k for k, v in model.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= lns, sorted(changed - lns)
    assert math.isclose(model.logit_scale, math.exp(before["logit_scale"].item()), rel_tol=1e-6)


def test_max_steps_cuts_training_after_that_many_batches() -> None:
    doc = config.read_params("params/smoke.yaml")
    cfg = config.stage_config({"common": doc["common"], "finetune_clip": {
        **doc["finetune_clip"], "epochs": None, "max_steps": 5, "log_every": 1}}, "finetune_clip", source="t")
    torch.manual_seed(0)
    model = clip.build_clip("ezsd-tiny-cnn", None, allow_random_init=True)
    loader = [(torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 0]), torch.ones(3)) for _ in range(2)]
    rows = st.train(model, loader, ("circle", "star"), cfg, torch.device("cpu"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and [r["epoch"] for r in rows] == [1, 1, 2, 2, 3]


def test_zero_epochs_keeps_the_untuned_clip_for_every_later_stage(smoke_stages, tmp_path) -> None:
    """Ablation (e) sets ``finetune_clip.epochs=0``: stage 01 must then hand on stage 00's CLIP as it is
    (LayerNorms and text embeddings), while the tuned run's differ from it."""
    from conftest import run_stages_in_process

    from ezsd_core import artefacts
    from ezsd_core.stages.propose_regions import scoring_clip

    world, tuned_root = smoke_stages
    untuned_root = tmp_path / "smoke"
    stage00 = lambda root: artefacts.stage_dir(root, "pretrain_clip")
    shutil.copytree(stage00(tuned_root), stage00(untuned_root))
    run_stages_in_process(world, untuned_root, ["finetune_clip"], extra=("finetune_clip.epochs=0",))
    loaded = {name: clip.load_tuned(artefacts.stage_dir(root, "finetune_clip")) for name, root in
              (("untuned", untuned_root), ("tuned", tuned_root))}
    propose = config.stage_config(config.read_params("params/smoke.yaml"), "propose_regions", source="t", overrides=[
        f"common.data_root={world}", f"common.run_root={tuned_root}", "propose_regions.clip_layernorms=original"])
    reference, reference_text, _ = scoring_clip(propose, "cpu")  # stage 00's CLIP, text re-encoded with it
    ref_ln = clip.layernorm_parameters(reference.model)
    same = lambda model: all(torch.equal(v, ref_ln[k]) for k, v in clip.layernorm_parameters(model.model).items())
    assert same(loaded["untuned"][0]) and not same(loaded["tuned"][0])
    assert torch.allclose(loaded["untuned"][1]["proposal"], reference_text, atol=1e-6)
    assert not torch.allclose(loaded["tuned"][1]["proposal"], reference_text, atol=1e-3)
