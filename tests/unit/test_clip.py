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


SIGLIP_STATS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def _local_dir(model: clip.Clip, folder: Path, preprocess: dict | None = None) -> Path:
    import json

    folder.mkdir()
    state = {k: v.contiguous() for k, v in model.model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    cfg = {"model_cfg": clip.packaged_config(model.model_name)}
    if preprocess:
        cfg["preprocess_cfg"] = preprocess
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return folder


def test_local_dir_loads_weights_and_its_preprocess_statistics(tiny: clip.Clip, tmp_path: Path) -> None:
    folder = _local_dir(tiny, tmp_path / "weights", SIGLIP_STATS)
    again = clip.build_clip("ezsd-tiny-cnn", f"local-dir:{folder}")
    assert again.image_mean == (0.5, 0.5, 0.5) and again.image_std == (0.5, 0.5, 0.5)
    assert tiny.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))  # OpenAI's by default
    state = again.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tiny.model.state_dict().items())
    with pytest.raises(ValueError, match="another model config than clip_model 'ViT-B-32'"):
        clip.build_clip("ViT-B-32", f"local-dir:{folder}")
    with pytest.raises(ValueError, match="needs open_clip_config.json"):
        clip.build_clip("ezsd-tiny-cnn", f"local-dir:{tmp_path}")


def test_crops_are_normalised_with_the_models_own_statistics(tiny: clip.Clip, tmp_path: Path) -> None:
    from ezsd_core.stages import extract_features

    other = clip.build_clip("ezsd-tiny-cnn", f"local-dir:{_local_dir(tiny, tmp_path / 'w', SIGLIP_STATS)}")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(other.normalize(x), (x - 0.5) / 0.5)
    mean = torch.tensor(tiny.image_mean).view(1, 3, 1, 1)
    assert torch.allclose(tiny.normalize(x), (x - mean) / torch.tensor(tiny.image_std).view(1, 3, 1, 1))
    # a stage's crops go through the model's statistics: same weights, other stats, other embeddings
    image = (torch.rand(3, 40, 48) * 255).to(torch.uint8)
    boxes = torch.tensor([[2.0, 3.0, 30.0, 33.0], [10.0, 5.0, 40.0, 20.0]])
    got = extract_features.embed_boxes(image, boxes, other, crop_scale=1.2, crops_per_batch=8, dim=64)
    from ezsd_core import crops

    cut = crops.cut_crops(image, boxes, scale=1.2, size=32)
    assert torch.allclose(got, clip.encode_images(tiny, (cut - 0.5) / 0.5), atol=1e-5)
    assert not torch.allclose(got, extract_features.embed_boxes(image, boxes, tiny, crop_scale=1.2,
                                                                crops_per_batch=8, dim=64), atol=1e-3)


def test_missing_pretrained_weights_say_how_to_provide_them_offline(monkeypatch, tmp_path: Path) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError) as e:
        clip.build_clip("ViT-B-32-quickgelu", "openai")
    msg = str(e.value)
    assert "\n" not in msg and "not in the local cache" in msg and "clip_pretrained: /path/ViT-B-32.pt" in msg
    with pytest.raises(ValueError, match="nor an existing checkpoint file; to run offline"):
        clip.build_clip("ViT-B-32-quickgelu", "/no/such/ViT-B-32.pt")
