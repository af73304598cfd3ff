"""open_clip wrapper: build a CLIP explicitly, make only its LayerNorms trainable, encode crops and names.

Role: every CLIP the pipeline uses goes through ``build_clip``: real settings name an open_clip
model and a pretrained tag or checkpoint (``ViT-B-32-quickgelu`` + ``openai``); toy settings name
a packaged config (``ezsd-tiny-cnn``, registered here on first use) and the stage-00 checkpoint.
A random init is refused unless asked for (open_clip's own default silently allows it).
LayerNorm selection is by module type (``nn.LayerNorm`` and subclasses), per tower: for ViT-B/32 it
finds the 26 image-tower and 25 text-tower LNs of the method spec §2 (39,936 + 25,600 parameters).
Layer 2: imports crops, tinyclip (layer 1).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from ezsd_core import crops

log = logging.getLogger(__name__)
TOWERS = ("image", "text")


@dataclass
class Clip:
    """A built CLIP and what is needed to use it.

    Attributes:
        model: the open_clip model (``encode_image`` / ``encode_text``).
        tokenizer: open_clip tokenizer: list of strings -> (B, context) int64.
        image_size: input side S of the image tower.
        model_name, pretrained: how it was built (recorded in manifests).
        image_mean, image_std: per-channel statistics the image tower expects its [0, 1] RGB input
            normalised with (the weights' preprocess config: OpenAI's for OpenAI CLIP, 0.5 for SigLIP).
    """

    model: nn.Module
    tokenizer: Callable[[Sequence[str]], Tensor]
    image_size: int
    model_name: str
    pretrained: str | None
    image_mean: tuple[float, ...] = crops.CLIP_MEAN  # open_clip's default when the weights name none
    image_std: tuple[float, ...] = crops.CLIP_STD

    def normalize(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) RGB in [0, 1] -> normalised with this model's own ``image_mean`` / ``image_std``."""
        return crops.normalize(images, self.image_mean, self.image_std)

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale): the fixed multiplier of cosine logits (100 for OpenAI CLIP)."""
        return float(self.model.logit_scale.exp())


@cache
def register_packaged_models() -> tuple[str, ...]:
    """Register the model configs shipped in ``ezsd_core/resources/open_clip`` (and their timm towers).

    Called by ``build_clip``; nothing is registered at import time.
    """
    import open_clip

    from ezsd_core import tinyclip

    tinyclip.register_timm_towers()
    folder = resources.files("ezsd_core").joinpath("resources/open_clip")
    names = []
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            open_clip.add_model_config(Path(str(entry)))
            names.append(entry.name[: -len(".json")])
    return tuple(sorted(names))


def build_clip(model_name: str, pretrained: str | None, *, allow_random_init: bool = False,
               device: str | torch.device = "cpu") -> Clip:
    """Build an open_clip model in eval mode with every parameter frozen.

    Args:
        model_name: an open_clip model name, verbatim (``ViT-B-32-quickgelu``) or a packaged
            ``ezsd-*`` config.
        pretrained: where the weights come from: an open_clip pretrained tag (``openai``, fetched
            into or read from the hub cache); a checkpoint file: an open_clip state dict
            (``.safetensors`` / ``.pt`` / ``.bin``, read with ``weights_only``) or OpenAI's TorchScript
            archive (``ViT-B-32.pt``, its tensors read without running its code); ``local-dir:DIR``,
            a folder with ``open_clip_config.json`` (whose ``model_cfg`` must be ``model_name``'s) and
            the weights; or None for random init.
        allow_random_init: must be True when ``pretrained`` is None.
        device: where to put the model.

    Returns:
        The built Clip (``image_mean`` / ``image_std``: the weights' own preprocessing statistics).

    Raises:
        ValueError: unknown model name, random init not allowed, weights that are missing (one line
            saying how to provide them offline) or that do not fit the model.
    """
    import open_clip

    register_packaged_models()
    if model_name not in open_clip.list_models():
        raise ValueError(f"clip_model: unknown open_clip model {model_name!r}; e.g. ViT-B-32-quickgelu, "
                         f"or a packaged one: {', '.join(register_packaged_models())}")
    if pretrained is None and not allow_random_init:
        raise ValueError("clip_pretrained: null builds a random-init CLIP; set allow_random_init: true to allow it")
    with _quiet_open_clip():
        model = _create(model_name, pretrained)
        tokenizer = open_clip.get_tokenizer(model_name)
    model.to(device).eval().requires_grad_(False)
    size = model.visual.image_size
    pp = open_clip.get_model_preprocess_cfg(model)
    return Clip(model=model, tokenizer=tokenizer, model_name=model_name,
                image_size=int(size[0] if isinstance(size, tuple | list) else size), pretrained=pretrained,
                image_mean=tuple(map(float, pp["mean"])), image_std=tuple(map(float, pp["std"])))


OFFLINE_HINT = ("to run offline, copy the weights to this machine and name the file: clip_pretrained: "
                "/path/ViT-B-32.pt (OpenAI's file), /path/open_clip_model.safetensors, or local-dir:/path/DIR")


def _create(model_name: str, pretrained: str | None) -> nn.Module:
    """open_clip model with the weights ``pretrained`` names (see ``build_clip``); errors in one line."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained is None:
        return open_clip.create_model(model_name, pretrained=None)
    if pretrained in tags:
        try:
            return open_clip.create_model(model_name, pretrained=pretrained)
        except RuntimeError as e:
            if "download" not in str(e).lower():
                raise
            raise ValueError(f"clip_pretrained: the {pretrained!r} weights of {model_name} are not in the local "
                             f"cache and cannot be downloaded here; {OFFLINE_HINT}") from None
    if pretrained.startswith(LOCAL_DIR):
        return _create_local_dir(model_name, Path(pretrained[len(LOCAL_DIR):]))
    path = Path(pretrained)
    if not path.is_file():
        raise ValueError(f"clip_pretrained: {pretrained!r} is neither a pretrained tag of {model_name} "
                         f"({', '.join(tags) or 'none'}) nor an existing checkpoint file; {OFFLINE_HINT}")
    from ezsd_core import scriptarchive

    if not scriptarchive.is_script_archive(path):
        return open_clip.create_model(model_name, pretrained=str(path))  # open_clip state dict, weights_only
    model = open_clip.create_model(model_name, pretrained=None)
    load_weights(model, scriptarchive.read_state_dict(path), source=str(path))
    return model


LOCAL_DIR = "local-dir:"
# tensors in OpenAI's TorchScript archives that are attributes of its code, not weights
SCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def load_weights(model: nn.Module, state: dict[str, Tensor], *, source: str) -> None:
    """Copy a full CLIP state dict (OpenAI's key layout, any float dtype) into an open_clip model.

    Every weight of the model must be present; tensors the model lacks are allowed only when they
    are OpenAI's non-weight attributes (``SCRIPT_EXTRAS``, ``*.attn_mask``).

    Raises:
        ValueError: a missing, unexpected or misshapen tensor, named with ``source``.
    """
    from open_clip.model import convert_to_custom_text_state_dict

    state = {k: v for k, v in state.items() if k not in SCRIPT_EXTRAS and not k.endswith("attn_mask")}
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    want = model.state_dict()
    if "logit_scale" in state and state["logit_scale"].shape != want["logit_scale"].shape:
        state["logit_scale"] = state["logit_scale"].reshape(want["logit_scale"].shape)
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if want[k].shape != state[k].shape)
    for what, names in (("lacks", missing), ("has tensors this model does not", unexpected),
                        ("has tensors of another shape", wrong)):
        if names:
            raise ValueError(f"clip_pretrained: {source} {what} ({len(names)}, e.g. {names[0]}): it holds another "
                             f"model than clip_model")
    model.load_state_dict(state, strict=True)


def _create_local_dir(model_name: str, folder: Path) -> nn.Module:
    import open_clip

    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise ValueError(f"clip_pretrained: local-dir:{folder} needs {config.name} and the weights in that folder "
                         f"(open_clip's save_for_hf layout); {OFFLINE_HINT}")
    stored = json.loads(config.read_text()).get("model_cfg")
    if stored != open_clip.get_model_config(model_name):
        raise ValueError(f"clip_pretrained: local-dir:{folder} holds another model config than clip_model "
                         f"{model_name!r}; name the model its open_clip_config.json describes")
    return open_clip.create_model(f"{LOCAL_DIR}{folder}")


class _quiet_open_clip:
    """open_clip logs on the root logger (INFO chatter; a WARNING even when random init was asked for)."""

    def __enter__(self) -> None:
        self.level = logging.root.level
        logging.root.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.root.setLevel(self.level)


def tower_modules(model: nn.Module, tower: str) -> list[nn.Module]:
    """The top-level modules of one tower: ``image`` = ``visual``; ``text`` = every other child."""
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}")
    children = dict(model.named_children())
    return [children["visual"]] if tower == "image" else [m for n, m in children.items() if n != "visual"]


def layernorm_parameters(model: nn.Module, towers: Sequence[str] = TOWERS) -> dict[str, nn.Parameter]:
    """Name -> parameter of every LayerNorm weight/bias in the given towers (state-dict names)."""
    chosen = {id(m) for t in towers for top in tower_modules(model, t) for m in top.modules()
              if isinstance(m, nn.LayerNorm)}
    out = {}
    for name, module in model.named_modules():
        if id(module) in chosen:
            for pname, p in module.named_parameters(recurse=False):
                out[f"{name}.{pname}"] = p
    return out


def set_trainable_layernorms(model: nn.Module, towers: Sequence[str] = TOWERS) -> int:
    """Freeze everything (``logit_scale`` included), then unfreeze the LayerNorms of ``towers``.

    Returns:
        The number of trainable parameters.
    """
    model.requires_grad_(False)
    params = layernorm_parameters(model, towers)
    for p in params.values():
        p.requires_grad_(True)
    return sum(p.numel() for p in params.values())


def encode_texts(clip: Clip, names: Sequence[str], templates: Sequence[str]) -> Tensor:
    """L2-normalised text embeddings of class names, averaged over prompt templates.

    Args:
        clip: the model (gradients flow when its text LayerNorms are trainable and grad is enabled).
        names: K class names, substituted verbatim into each template's ``{}``.
        templates: T templates such as ``"a photo of a {}"``.

    Returns:
        (K, D) float32, unit rows; with one template this is the normalised embedding of the prompt.
    """
    device = next(clip.model.parameters()).device
    tokens = clip.tokenizer([t.format(n) for t in templates for n in names]).to(device)
    emb = nn.functional.normalize(clip.model.encode_text(tokens).float(), dim=-1)
    emb = emb.view(len(templates), len(names), -1).mean(0)
    return nn.functional.normalize(emb, dim=-1)


def encode_images(clip: Clip, images: Tensor) -> Tensor:
    """Raw (unnormalised) image embeddings.

    Args:
        images: (B, 3, S, S) crops normalised with the model's statistics (``clip.normalize``), S = ``clip.image_size``.

    Returns:
        (B, D) float32.
    """
    # channels-last lets oneDNN pick its fast convolution kernels: ~1.7-2x for the toy CNN on a CPU
    return clip.model.encode_image(images.contiguous(memory_format=torch.channels_last)).float()


def load_layernorms(clip: Clip, path: Path | str) -> None:
    """Load tuned LayerNorm parameters (stage 01's ``clip_ln.safetensors``) into ``clip.model``.

    Raises:
        ValueError: when a stored name is not a LayerNorm parameter of this model.
    """
    from safetensors.torch import load_file

    state = load_file(str(path))
    known = layernorm_parameters(clip.model)
    unknown = sorted(set(state) - set(known))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} tensors are not LayerNorm parameters of {clip.model_name} "
                         f"(e.g. {unknown[0]})")
    with torch.no_grad():
        for name, value in state.items():
            known[name].copy_(value)


def packaged_config(model_name: str) -> dict:
    """The JSON config of a packaged ``ezsd-*`` model."""
    return json.loads(resources.files("ezsd_core").joinpath(f"resources/open_clip/{model_name}.json").read_text())


def load_tuned(finetune_dir: Path | str, device: str | torch.device = "cpu") -> tuple[Clip, dict[str, Tensor]]:
    """The CLIP of stage 01 (its base model + tuned LayerNorms) and its text embeddings.

    Args:
        finetune_dir: ``runs/<split>/01_finetune_clip`` (complete; check with ``artefacts.require_complete``).

    Returns:
        The Clip and ``{vocab: (K, D) float32 unit rows, f"{vocab}_category_ids": (K,) int64}`` for
        vocab in base / novel / all / proposal.
    """
    from safetensors.torch import load_file

    from ezsd_core import artefacts

    finetune_dir = Path(finetune_dir)
    record = artefacts.read_manifest(finetune_dir)["clip"]
    model = build_clip(record["model_name"], record["pretrained"], allow_random_init=record["pretrained"] is None,
                       device=device)
    load_layernorms(model, finetune_dir / "clip_ln.safetensors")
    return model, load_file(str(finetune_dir / "text_embeds.safetensors"))
