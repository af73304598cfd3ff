"""Seeds, devices, threads and checkpoint files.

Role: the small runtime facts every stage needs: ``seed_everything`` (called first in each
``run()``), ``resolve_device``, and checkpoint save/load that never unpickles arbitrary objects
(``weights_only=True``, ``map_location="cpu"``). Layer 1: torch; imports artefacts.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ezsd_core import artefacts

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> dict[str, Any]:
    """Seed python, numpy and torch; return what the manifest records about determinism."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return {"seed": seed, "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "num_threads": torch.get_num_threads()}


def configure_threads() -> None:
    """Use all cores without OpenMP spin-waiting (spinning made CPU steps ~3x slower on 2 cores)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available (saying so in one log line when it is not), else cpu;
    anything else is checked, and so is whether this torch build can drive the GPU it finds.

    Raises:
        ValueError: a CUDA device was asked for on a machine without one, the name is invalid, or the
            installed torch has no kernels for the GPU's compute capability (e.g. a CUDA 13 build on a
            V100, capability 7.0), in one line naming both.
    """
    if device == "auto":
        if not torch.cuda.is_available():
            log.warning("device: auto found no CUDA device; running on the CPU")
            return torch.device("cpu")
        dev = torch.device("cuda")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device: got {device!r}; allowed: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: got {device!r} but CUDA is not available here; use device: cpu or auto")
        check_cuda_arch(dev)
        enable_tf32()
    return dev


def check_cuda_arch(dev: torch.device) -> None:
    """Raise one line when this torch build was compiled for none of the GPU's architectures."""
    major, minor = torch.cuda.get_device_capability(dev)
    archs = torch.cuda.get_arch_list()  # e.g. ['sm_75', 'sm_80', ..., 'compute_90']
    cap = 10 * major + minor
    kernels = {int(a[3:]) for a in archs if a.startswith("sm_") and a[3:].isdigit()}
    ptx = [int(a[8:]) for a in archs if a.startswith("compute_") and a[8:].isdigit()]  # JIT-compiled upwards
    if archs and cap not in kernels and not any(p <= cap for p in ptx):
        raise ValueError(f"device: {torch.cuda.get_device_name(dev)} has compute capability {major}.{minor}, but "
                         f"torch {torch.__version__} was built for {', '.join(archs)}; install a build of the same "
                         f"torch version with kernels for sm_{major}{minor} (e.g. a CUDA 12 wheel)")


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype of a params ``amp`` knob: None when off or not on CUDA (the CPU path is exact
    float32), bfloat16 where the GPU has it (compute capability >= 8.0), else float16 (e.g. a V100)."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool):
    """``torch.autocast`` with ``amp_dtype``, or a no-op context when that is None."""
    import contextlib

    dtype = amp_dtype(device, enabled)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def enable_tf32() -> None:
    """TF32 cuBLAS matmuls and cuDNN convolutions on Ampere and later (float32 inputs, 10-bit mantissa
    products). Only the CUDA backends are set: CPU matmuls keep full float32 whatever runs before them."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """``torch.save`` a dict of tensors/primitives atomically (a crash never leaves half a file)."""
    with artefacts.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` on the CPU, without unpickling code."""
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# torchrun / DDP


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside ``torchrun``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started (``WORLD_SIZE``; 1 outside it), before joining any group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> tuple[int, int]:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1): nccl on CUDA, else gloo."""
    import torch.distributed as dist

    if launched_world_size() > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return distributed_rank_and_size()


def distributed_device(device: str) -> torch.device:
    """This rank's device: ``cuda:<LOCAL_RANK>`` when CUDA is asked for (or auto and present), else cpu."""
    if device in ("cuda", "auto") and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return resolve_device(device)


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (gradients averaged across ranks)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def finish_distributed() -> None:
    """Leave the process group, if any."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
