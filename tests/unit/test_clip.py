from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ezsd_core import clip


@pytest.fixture(scope="module")
def tiny() -> clip.Clip:
    torch.manual_seed(0)
    return clip.build_clip("ezsd-tiny-cnn", None, allow_random_init=True)


def test_vit_b32_layernorm_counts_match_the_method_spec() -> None:
    vit = clip.build_clip("ViT-B-32-quickgelu", None, allow_random_init=True)
    image = clip.layernorm_parameters(vit.model, ["image"])
    text = clip.layernorm_parameters(vit.model, ["text"])
    assert sum(p.numel() for p in image.values()) == 26 * 2 * 768 == 39_936
    assert sum(p.numel() for p in text.values()) == 25 * 2 * 512 == 25_600
    assert {"visual.ln_pre.weight", "visual.ln_post.bias", "ln_final.weight"} <= set(image) | set(text)
    n = clip.set_trainable_layernorms(vit.model, ["image"])
    trainable = [name for name, p in vit.model.named_parameters() if p.requires_grad]
    assert n == 39_936 and all(t.startswith("visual.") and ".ln_" in f".{t}" for t in trainable)
    assert not vit.model.logit_scale.requires_grad


def test_tiny_clip_has_image_layernorms_and_encodes(tiny: clip.Clip) -> None:
    assert tiny.image_size == 32
    assert clip.set_trainable_layernorms(tiny.model) > 0
    assert any(n.startswith("visual.") for n in clip.layernorm_parameters(tiny.model, ["image"]))
    text = clip.encode_texts(tiny, ["circle", "star", "heart"], ["a photo of a {}", "a {}"])
    assert text.shape == (3, 64) and torch.allclose(text.norm(dim=1), torch.ones(3))
    assert clip.encode_images(tiny, torch.randn(5, 3, 32, 32)).shape == (5, 64)
    clip.set_trainable_layernorms(tiny.model, [])


def test_saved_weights_reload_exactly(tiny: clip.Clip, tmp_path: Path) -> None:
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(path))
    again = clip.build_clip("ezsd-tiny-cnn", str(path))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(clip.encode_images(tiny, x), clip.encode_images(again, x))
    assert torch.equal(clip.encode_texts(tiny, ["ring"], ["a {}"]), clip.encode_texts(again, ["ring"], ["a {}"]))


def test_random_init_and_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="allow_random_init: true"):
        clip.build_clip("ezsd-tiny-cnn", None)
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-B-33'"):
        clip.build_clip("ViT-B-33", "openai")
    with pytest.raises(ValueError, match="neither a pretrained tag"):
        clip.build_clip("ezsd-tiny-cnn", "/no/such/file.safetensors")


def test_load_layernorms_accepts_only_layernorm_tensors(tiny: clip.Clip, tmp_path: Path) -> None:
    lns = clip.layernorm_parameters(tiny.model)
    name = next(iter(lns))
    save_file({name: torch.full_like(lns[name], 0.5)}, str(tmp_path / "ln.safetensors"))
    clip.load_layernorms(tiny, tmp_path / "ln.safetensors")
    assert torch.all(lns[name] == 0.5)
    save_file({"visual.trunk.head.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not LayerNorm parameters"):
        clip.load_layernorms(tiny, tmp_path / "bad.safetensors")
