"""Correctness under concurrency (issue 10 §2): shards that finish together finalise once; temporary
names are unique across hosts; a kernel that loses a port race is relaunched; a batch the processes
cannot share fails in one line; the training dataset survives spawn workers."""

from __future__ import annotations

import dataclasses
import pickle
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from ezsd_core import artefacts, config, lineage, pipeline
from ezsd_core.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# temporary names


def test_temporary_names_differ_across_hosts_with_equal_pids(monkeypatch) -> None:
    monkeypatch.setattr("os.getpid", lambda: 4242)
    names = {}
    for host in ("node-a", "node-b"):
        monkeypatch.setattr(socket, "gethostname", lambda h=host: h)
        names[host] = artefacts.temp_name("manifest.json")
    assert names["node-a"] != names["node-b"]
    assert "node-a" in names["node-a"] and "4242" in names["node-a"]


def test_two_writers_of_one_file_in_one_process_use_different_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with artefacts.atomic_path(target) as a, artefacts.atomic_path(target) as b:
        assert a != b
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert target.read_bytes() == b"a"  # the outer writer renamed last; its file was never clobbered
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# ---------------------------------------------------------------------------------------------
# finalisation


@pytest.mark.parametrize("stage", ["propose_regions", "extract_features"])
def test_shards_finishing_together_write_manifest_and_metrics_once(smoke_stages, tmp_path: Path, stage: str,
                                                                    monkeypatch) -> None:
    import importlib

    world, src = smoke_stages
    run_root = tmp_path / "smoke"
    shutil.copytree(src, run_root)
    folder = artefacts.stage_dir(run_root, stage)
    before = artefacts.read_manifest(folder)
    lineage.invalidate(folder)  # every shard written, nobody finalised yet
    cfg = config.stage_config(config.read_params(ROOT / "params/smoke.yaml"), stage, source="smoke",
                              overrides=[f"common.data_root={world}", f"common.run_root={run_root}"])
    module = importlib.import_module(f"ezsd_core.stages.{stage}")
    begun = lineage.begin(cfg, stage)
    assert begun.skipped is None
    writes, real = [], artefacts.write_manifest

    def slow_write(*args, **kwargs):  # widen the window between "all shards done" and the manifest
        writes.append(threading.get_ident())
        time.sleep(0.5)
        return real(*args, **kwargs)

    metrics_writes = []
    real_json = artefacts.atomic_write_json
    monkeypatch.setattr(artefacts, "write_manifest", slow_write)
    monkeypatch.setattr(artefacts, "atomic_write_json",
                        lambda p, o: (metrics_writes.append(Path(p).name), real_json(p, o))[1])
    gate, results, errors = threading.Barrier(2), [], []

    def finish_a_shard():
        try:
            gate.wait()
            results.append(module.finalize_if_complete(cfg, folder, begun.key, begun.config_hash, begun.upstream,
                                                       begun.started_at))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=finish_a_shard) for _ in range(2)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert not errors, errors
    assert len(writes) == 1, f"the manifest was written {len(writes)} times"
    assert metrics_writes.count("metrics.json") == (1 if stage == "propose_regions" else 0)
    m = artefacts.require_complete(run_root, stage)
    assert m["artefact_hash"] == before["artefact_hash"]
    assert results[0].summary == results[1].summary == m["summary"]
    findings, _ = lineage.verify_run(run_root)
    assert not findings, findings  # the lock file is bookkeeping, not an unlisted output


# ---------------------------------------------------------------------------------------------
# kernel launches


def _tiny_notebook(path: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(x + 1)")]
    nbformat.write(nb, path)
    return path


def test_a_kernel_that_loses_a_port_race_is_relaunched(tmp_path: Path, monkeypatch) -> None:
    """The first launch gets a port another process holds (what a concurrent launch does); the kernel
    dies with "Address already in use" and the runner launches it again."""
    from jupyter_client.connect import LocalPortCache

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    real, calls = LocalPortCache.find_available_port, []

    def racy(self, ip):
        calls.append(ip)
        return taken if len(calls) == 1 else real(self, ip)  # the first launch's shell port is taken

    monkeypatch.setattr(LocalPortCache, "find_available_port", racy)
    out = tmp_path / "out.ipynb"
    try:
        pipeline.execute_notebook(_tiny_notebook(tmp_path / "nb.ipynb"), out, {"x": 41}, label="stage demo")
    finally:
        holder.close()
    assert len(calls) >= 10, "the kernel was launched only once"
    import nbformat

    outputs = nbformat.read(out, as_version=4).cells[-1].outputs
    assert outputs and outputs[0]["text"].strip() == "42"


def test_a_kernel_that_never_starts_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import papermill

    launches = []

    def dead(*args, **kwargs):
        launches.append(1)
        raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(papermill, "execute_notebook", dead)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    with pytest.raises(pipeline.StageFailed) as e:
        pipeline.execute_notebook(tmp_path / "nb.ipynb", tmp_path / "out.ipynb", {}, label="stage propose_regions",
                                  attempts=3)
    assert len(launches) == 3
    msg = str(e.value)
    assert "\n" not in msg and "stage propose_regions" in msg and "failed to start 3 times" in msg


def test_a_failing_cell_is_not_relaunched(tmp_path: Path, monkeypatch) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    launches = []

    def fails(*args, **kwargs):
        launches.append(1)
        raise PapermillExecutionError(0, 1, "source", "ValueError", "bad value", [])

    monkeypatch.setattr(papermill, "execute_notebook", fails)
    with pytest.raises(pipeline.StageFailed, match="ValueError: bad value"):
        pipeline.execute_notebook(tmp_path / "nb.ipynb", tmp_path / "out.ipynb", {}, label="stage x")
    assert len(launches) == 1


# ---------------------------------------------------------------------------------------------
# batch size vs world size


def _train_cfg(**changes) -> config.TrainDetectorConfig:
    overrides = [f"train_detector.{k}={v}" for k, v in changes.items()]
    return config.stage_config(config.read_params(ROOT / "params/smoke.yaml"), "train_detector", source="smoke",
                               overrides=overrides)


def test_a_batch_the_processes_cannot_share_is_refused_in_one_line() -> None:

    with pytest.raises(ConfigError) as e:
        config.train_batch(_train_cfg(batch_size=4), 8)
    msg = str(e.value)
    assert "\n" not in msg and "train_detector.batch_size" in msg and "batch_size_per_gpu" in msg
    assert config.train_batch(_train_cfg(batch_size=4), 2) == (4, pytest.approx(1e-3))


def test_batch_size_per_gpu_scales_the_learning_rate_linearly() -> None:

    cfg = _train_cfg(batch_size=4, batch_size_per_gpu=2, lr=1.0e-3)
    assert config.train_batch(cfg, 8) == (16, pytest.approx(4e-3))
    assert config.train_batch(cfg, 1) == (2, pytest.approx(5e-4))


def test_the_job_refuses_the_batch_before_it_joins_the_process_group(monkeypatch, tmp_path: Path) -> None:
    from ezsd_core.stages import train_detector as td

    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="cannot be split evenly over 8 processes"):
        td.run(dataclasses.replace(_train_cfg(batch_size=4), run_root=tmp_path))
    assert not any(tmp_path.iterdir()), "nothing ran"


# ---------------------------------------------------------------------------------------------
# datasets in spawn / forkserver workers


def test_distill_dataset_survives_spawn_workers(smoke_stages) -> None:
    from ezsd_core import data
    from ezsd_core.stages import train_detector as td

    world, run_root = smoke_stages
    cfg = config.stage_config(config.read_params(ROOT / "params/smoke.yaml"), "train_detector", source="smoke",
                              overrides=[f"common.data_root={world}", f"common.run_root={run_root}"])
    split, records = data.read_config_records(cfg, "train", with_masks=True)
    ds = td.DistillDataset(records, split.label_map("base"), td.feature_index(run_root), cfg)
    again = pickle.loads(pickle.dumps(ds))
    a, b = ds[(0, 1)], again[(0, 1)]
    assert a[0].equal(b[0]) and all(a[2][k].equal(b[2][k]) for k in a[2])
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[[(0, 0), (0, 1)]], num_workers=1, collate_fn=list,
                                         multiprocessing_context="spawn")
    (batch,) = list(loader)
    want = [ds[(0, 0)], ds[(0, 1)]]
    assert all(x[0].equal(y[0]) and x[1]["boxes"].equal(y[1]["boxes"]) and x[2]["embeds"].equal(y[2]["embeds"])
               for x, y in zip(batch, want, strict=True))
