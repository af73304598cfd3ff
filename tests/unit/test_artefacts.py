from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ezsd_core import artefacts, lineage


def test_atomic_write_leaves_old_file_when_the_writer_crashes(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    artefacts.atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with artefacts.atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')  # half-written, then the writer dies
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"], "no temporary file is left behind"


def test_stage_paths_follow_the_naming_convention(tmp_path: Path) -> None:
    assert artefacts.stage_dir(tmp_path, "propose_regions") == tmp_path / "02_propose_regions"
    assert artefacts.shard_name(3, 16) == "shard-00003-of-00016.safetensors"
    with pytest.raises(ValueError, match="unknown stage 'proposals'"):
        artefacts.stage_dirname("proposals")


def _finished_stage(tmp_path: Path) -> Path:
    d = tmp_path / "00_pretrain_clip"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"abc")
    (d / "sub" / "b.bin").write_bytes(b"defg")
    artefacts.write_manifest(d, stage="pretrain_clip", split="smoke", config={"lr": 1.0}, config_hash="sha256:c",
                             upstream={"x": "sha256:u"}, outputs=["a.bin", "sub/b.bin"], summary={"n": 1},
                             started_at=artefacts.utc_now())
    return d


def test_manifest_round_trip_and_lineage(tmp_path: Path) -> None:
    d = _finished_stage(tmp_path)
    m = artefacts.read_manifest(d)
    assert m["status"] == "complete" and m["config_hash"] == "sha256:c" and m["upstream"] == {"x": "sha256:u"}
    assert [o["path"] for o in m["outputs"]] == ["a.bin", "sub/b.bin"]
    assert m["outputs"][0]["sha256"] == artefacts.sha256_file(d / "a.bin") and m["outputs"][1]["bytes"] == 4
    assert m["env"]["torch"] and m["code"]["ezsd_core"]
    assert "cpu_model" in m["env"] and "cpu_flags" in m["env"], "the CPU is recorded (its kernels set the last bits)"
    again = artefacts.write_manifest(d, stage="pretrain_clip", split="smoke", config={}, config_hash="sha256:c",
                                     upstream={"x": "sha256:u"}, outputs=["a.bin", "sub/b.bin"], summary={},
                                     started_at="t")
    assert again["artefact_hash"] == m["artefact_hash"], "the artefact hash depends on content, not on time"


def test_staleness_reports_why_a_stage_must_run(tmp_path: Path) -> None:
    d = _finished_stage(tmp_path)
    ok = dict(config_hash="sha256:c", upstream={"x": "sha256:u"})
    assert artefacts.staleness(d, **ok) is None
    assert artefacts.staleness(tmp_path / "nothing", **ok) == "not run yet"
    assert artefacts.staleness(d, config_hash="sha256:other", upstream=ok["upstream"]) == "its config changed"
    assert artefacts.staleness(d, config_hash="sha256:c", upstream={"x": "sha256:new"}) == "upstream changed: x"
    (d / "sub" / "b.bin").write_bytes(b"de")
    assert artefacts.staleness(d, **ok) == "output sub/b.bin: size changed (4 -> 2 bytes)"
    (d / "a.bin").unlink()
    assert artefacts.staleness(d, **ok) == "output a.bin: missing"


def test_require_complete_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(artefacts.MissingArtefactError, match=r"stage 'finetune_clip'.*--stage finetune_clip"):
        artefacts.require_complete(tmp_path, "finetune_clip")
    d = _finished_stage(tmp_path)
    assert artefacts.require_complete(tmp_path, "pretrain_clip")["stage"] == "pretrain_clip"
    (d / "a.bin").unlink()
    with pytest.raises(artefacts.MissingArtefactError, match="output a.bin: missing"):
        artefacts.require_complete(tmp_path, "pretrain_clip")


def test_safetensors_header_is_read_without_torch(tmp_path: Path) -> None:
    p = tmp_path / "s.safetensors"
    save_file({"x": torch.zeros(3)}, str(p), metadata={"key": "k1"})
    assert artefacts.safetensors_metadata(p) == {"key": "k1"}
    assert artefacts.safetensors_metadata(tmp_path / "missing") is None
    (tmp_path / "junk").write_bytes(b"\xff" * 20)
    assert artefacts.safetensors_metadata(tmp_path / "junk") is None
    assert lineage.shard_key("sha256:a", {"u": "1"}) != lineage.shard_key("sha256:a", {"u": "2"})


def test_cpu_description_reads_model_and_kernel_flags() -> None:
    text = ("processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\nflags\t\t: fpu sse avx2 avx512f amx_tile\n\n"
            "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    assert artefacts.cpu_description(text) == {"cpu_model": "Example CPU @ 2.0GHz",
                                               "cpu_flags": "avx2 avx512f amx_tile"}
    assert artefacts.cpu_description("") == {"cpu_model": None, "cpu_flags": None}
    assert artefacts.cpu_description("flags : fpu sse\n")["cpu_flags"] == ""
