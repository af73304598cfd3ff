"""Mixed precision and TF32 (issue 10 §4), checked on the CPU: the dtype each device gets (bf16 where
the GPU has it, fp16 on a V100, nothing on a CPU), TF32 switched on with a CUDA device, and the CPU
twin: a stage run with ``amp: true`` on the CPU writes the same bytes as without."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ezsd_core import artefacts, clip, runtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bf16,enabled,want", [(True, True, torch.bfloat16), (False, True, torch.float16),
                                               (True, False, None)])
def test_amp_dtype_on_a_gpu(monkeypatch, bf16: bool, enabled: bool, want) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert runtime.amp_dtype(torch.device("cuda", 0), enabled) is want


def test_amp_is_off_on_the_cpu() -> None:
    assert runtime.amp_dtype(torch.device("cpu"), True) is None
    torch.manual_seed(0)
    model = clip.build_clip("ezsd-tiny-cnn", None, allow_random_init=True)
    x = torch.rand(2, 3, model.image_size, model.image_size)
    with torch.no_grad():
        plain = clip.encode_images(model, x)
        with runtime.autocast(torch.device("cpu"), True):
            auto = clip.encode_images(model, x)
    assert auto.dtype == torch.float32 and auto.equal(plain)


def test_a_cuda_device_turns_tf32_on(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_90"])
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    try:
        matmul.fp32_precision = conv.fp32_precision = "ieee"
        assert runtime.resolve_device("cpu") == torch.device("cpu")
        assert matmul.fp32_precision == "ieee", "a CPU run is untouched"
        assert runtime.resolve_device("cuda") == torch.device("cuda")
        assert matmul.fp32_precision == conv.fp32_precision == "tf32"
        assert torch.backends.mkldnn.matmul.fp32_precision != "tf32", "CPU matmuls keep their precision"
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


def test_amp_on_the_cpu_writes_the_same_regions(smoke_stages, tmp_path: Path) -> None:
    from conftest import run_stages_in_process

    world, src = smoke_stages
    run_root = tmp_path / "smoke"
    for stage in ("pretrain_clip", "finetune_clip"):
        shutil.copytree(artefacts.stage_dir(src, stage), artefacts.stage_dir(run_root, stage))
    run_stages_in_process(world, run_root, ["propose_regions"], ("propose_regions.amp=true",))
    ours = artefacts.require_complete(run_root, "propose_regions")
    theirs = artefacts.require_complete(src, "propose_regions")
    assert {o["path"]: o["sha256"] for o in ours["outputs"]} == {o["path"]: o["sha256"] for o in theirs["outputs"]}
