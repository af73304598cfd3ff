"""``runtime.resolve_device``: one line for every device it cannot use (no GPU behind ``auto``, a GPU
this torch build has no kernels for), checked with torch.cuda's queries faked."""

from __future__ import annotations

import logging

import pytest
import torch

from ezsd_core import runtime


def _gpu(monkeypatch, capability: tuple[int, int], archs: list[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: archs)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Tesla V100-SXM2-32GB")


def test_auto_without_a_gpu_says_so_in_one_line(monkeypatch, caplog) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="ezsd_core.runtime"):
        assert runtime.resolve_device("auto") == torch.device("cpu")
    assert [r.getMessage() for r in caplog.records] == ["device: auto found no CUDA device; running on the CPU"]


def test_a_gpu_the_build_has_no_kernels_for_is_one_clear_error(monkeypatch) -> None:
    _gpu(monkeypatch, (7, 0), ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])  # a CUDA 13 build
    for device in ("auto", "cuda", "cuda:0"):
        with pytest.raises(ValueError) as e:
            runtime.resolve_device(device)
        msg = str(e.value)
        assert "\n" not in msg and "compute capability 7.0" in msg and "Tesla V100" in msg and "sm_70" in msg


@pytest.mark.parametrize("archs", [["sm_70", "sm_75", "sm_80"], ["sm_60", "compute_60"]])
def test_a_gpu_the_build_supports_is_used(monkeypatch, archs: list[str]) -> None:
    _gpu(monkeypatch, (7, 0), archs)  # its own kernels, or PTX it can JIT-compile
    assert runtime.resolve_device("auto") == torch.device("cuda")
