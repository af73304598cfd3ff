"""OpenAI-style TorchScript archives load through ``clip.build_clip`` without running their code."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ezsd_core import clip, scriptarchive

# a tiny ViT CLIP with OpenAI's layout (standard text tower: ``transformer.*``, ``token_embedding``, ...)
TINY_VIT = {"embed_dim": 16, "quick_gelu": True,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
NAME = "ezsd-test-openai-layout"


class Holder(nn.Module):
    """A module with no behaviour: scripted only to carry named parameters and buffers (and, as real
    archives may, typed list and dict attributes, which TorchScript pickles through its own builders)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes = [32, 16]
        self.names = {"a": 1}

    def forward(self, x: Tensor) -> Tensor:
        return x


def _mirror(state: dict[str, Tensor], dtype: torch.dtype) -> nn.Module:
    """A module tree whose state dict is ``state`` (cast to ``dtype``), plus OpenAI's extra attributes."""
    root = Holder()
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if part not in node._modules:
                node.add_module(part, Holder())
            node = node._modules[part]
        node.register_parameter(leaf, nn.Parameter(value.detach().clone().to(dtype), requires_grad=False))
    root.register_buffer("input_resolution", torch.tensor(32))
    root.register_buffer("context_length", torch.tensor(16))
    root.register_buffer("vocab_size", torch.tensor(49408))
    return root


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> clip.Clip:
    import open_clip

    path = tmp_path_factory.mktemp("cfg") / f"{NAME}.json"
    path.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return clip.build_clip(NAME, None, allow_random_init=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16-like-openai"])
def test_torchscript_archive_loads_every_weight(original: clip.Clip, tmp_path: Path, dtype: torch.dtype) -> None:
    state = original.model.state_dict()
    assert {"positional_embedding", "token_embedding.weight", "visual.conv1.weight",
            "transformer.resblocks.1.attn.in_proj_weight", "visual.proj"} <= set(state)  # OpenAI's key layout
    archive = tmp_path / "ViT-tiny.pt"
    torch.jit.script(_mirror(state, dtype)).save(str(archive))
    assert scriptarchive.is_script_archive(archive)
    assert any("/code/" in n for n in zipfile.ZipFile(archive).namelist())  # a real TorchScript archive

    loaded = clip.build_clip(NAME, str(archive))
    again = loaded.model.state_dict()
    assert set(again) == set(state)
    for key, value in state.items():
        assert torch.equal(again[key], value.to(dtype).to(value.dtype)), key
    assert loaded.pretrained == str(archive)
    x = torch.randn(2, 3, 32, 32)
    if dtype == torch.float32:
        assert torch.equal(clip.encode_images(loaded, x), clip.encode_images(original, x))


def test_archive_reader_matches_torchscript_state_dict(original: clip.Clip, tmp_path: Path) -> None:
    archive = tmp_path / "m.pt"
    torch.jit.script(_mirror(original.model.state_dict(), torch.float16)).save(str(archive))
    read = scriptarchive.read_state_dict(archive)
    ref = torch.jit.load(str(archive)).state_dict()  # our own archive: safe to run here, as the reference
    assert set(read) == set(ref)
    assert all(read[k].dtype == ref[k].dtype and torch.equal(read[k], ref[k]) for k in ref)


def test_archive_naming_code_is_refused_without_running_it(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "ran"),))

    archive = tmp_path / "evil.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(Boom(), protocol=2))
        z.writestr("evil/code/__torch__.py", "")
    with pytest.raises(ValueError, match="mkdir.*refused"):
        scriptarchive.read_state_dict(archive)
    assert not (tmp_path / "ran").exists()


def test_archive_of_another_model_is_one_line(original: clip.Clip, tmp_path: Path) -> None:
    state = dict(original.model.state_dict())
    state.pop("visual.proj")
    archive = tmp_path / "other.pt"
    torch.jit.script(_mirror(state, torch.float32)).save(str(archive))
    with pytest.raises(ValueError, match=r"lacks \(1, e.g. visual.proj\)"):
        clip.build_clip(NAME, str(archive))
