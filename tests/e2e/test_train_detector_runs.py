"""Stage 04 on the smoke split: a killed run resumes from its last checkpoint and ends bit-identical
to an uninterrupted run (CPU); two gloo processes under torchrun train with DDP to a finished manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ezsd_core import artefacts, runtime

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _copy_run(src: Path, dst: Path) -> Path:
    for stage in ("pretrain_clip", "finetune_clip", "propose_regions", "extract_features"):
        shutil.copytree(artefacts.stage_dir(src, stage), artefacts.stage_dir(dst, stage))
    return dst


def test_killed_training_resumes_bit_identical(smoke_stages, tmp_path: Path, monkeypatch) -> None:
    from conftest import run_stages_in_process

    world, run_root = smoke_stages
    steps = ("train_detector.max_steps=6", "train_detector.checkpoint_every=2", "train_detector.log_every=1")
    whole = _copy_run(run_root, tmp_path / "whole")
    run_stages_in_process(world, whole, ["train_detector"], steps)
    killed = _copy_run(run_root, tmp_path / "killed")
    real_save = runtime.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["step"] == 4:
            raise KeyboardInterrupt("killed after the step-4 checkpoint")

    monkeypatch.setattr(runtime, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_stages_in_process(world, killed, ["train_detector"], steps)
    monkeypatch.setattr(runtime, "save_checkpoint", real_save)
    folder = artefacts.stage_dir(killed, "train_detector")
    assert (folder / "checkpoints/last.pt").exists() and artefacts.read_manifest(folder) is None
    run_stages_in_process(world, killed, ["train_detector"], steps)
    a = load_file(str(artefacts.stage_dir(whole, "train_detector") / "model.safetensors"))
    b = load_file(str(folder / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), "resumed weights differ"
    log_a = (artefacts.stage_dir(whole, "train_detector") / "train_log.jsonl").read_text()
    assert log_a == (folder / "train_log.jsonl").read_text()
    assert artefacts.read_manifest(folder)["summary"]["resumed_from_step"] == 4
    assert not (folder / "checkpoints/last.pt").exists()


def test_two_gloo_processes_train_with_ddp(smoke_stages, tmp_path: Path) -> None:
    world, run_root = smoke_stages
    ddp = _copy_run(run_root, tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "ezsd_core.stages.train_detector", str(ROOT / "params/smoke.yaml"),
           "--set", f"common.data_root={world}", "--set", f"common.run_root={ddp}",
           "--set", "train_detector.max_steps=6", "--set", "train_detector.log_every=1"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    m = artefacts.require_complete(ddp, "train_detector")
    assert m["summary"]["processes"] == 2 and m["summary"]["steps"] == 6
    log = artefacts.stage_dir(ddp, "train_detector") / "train_log.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(r["loss"] > 0 and r["loss"] < 1e3 for r in rows) and "loss_distill" in rows[0]


def test_the_preemption_signal_checkpoints_and_the_rerun_ends_bit_identical(smoke_stages, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """SLURM's ``--signal`` (USR2) mid-run: training checkpoints after that step and stops without a
    manifest; the requeued run resumes there and ends with the weights of an uninterrupted run."""
    import os
    import signal

    from conftest import run_stages_in_process

    from ezsd_core.stages import train_detector as td

    world, run_root = smoke_stages
    steps = ("train_detector.max_steps=6", "train_detector.checkpoint_every=100", "train_detector.log_every=1")
    whole = _copy_run(run_root, tmp_path / "whole")
    run_stages_in_process(world, whole, ["train_detector"], steps)
    stopped = _copy_run(run_root, tmp_path / "stopped")
    real = td.lr_factor

    def signal_at_step_2(step, *args):
        if step == 2:
            os.kill(os.getpid(), signal.SIGUSR2)  # what SLURM sends --signal seconds before the time limit
        return real(step, *args)

    monkeypatch.setattr(td, "lr_factor", signal_at_step_2)
    run_stages_in_process(world, stopped, ["train_detector"], steps)
    monkeypatch.setattr(td, "lr_factor", real)
    folder = artefacts.stage_dir(stopped, "train_detector")
    assert artefacts.read_manifest(folder) is None and not (folder / "model.safetensors").exists()
    assert runtime.load_checkpoint(folder / "checkpoints/last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL, "the handler is put back"
    run_stages_in_process(world, stopped, ["train_detector"], steps)
    a = load_file(str(artefacts.stage_dir(whole, "train_detector") / "model.safetensors"))
    b = load_file(str(folder / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), "resumed weights differ"
    assert artefacts.read_manifest(folder)["summary"]["resumed_from_step"] == 3
