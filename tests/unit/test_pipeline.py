"""The runner's decisions, without starting a kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from ezsd_core import artefacts, config, pipeline
from ezsd_core.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _params(tmp_path: Path, **stage_changes) -> Path:
    doc = yaml.safe_load((ROOT / "params/smoke.yaml").read_text())
    doc["common"]["run_root"] = str(tmp_path / "runs")
    doc["pretrain_clip"].update(stage_changes)
    p = tmp_path / "smoke.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_select_stages_orders_and_bounds() -> None:
    doc = {"common": {}, "pretrain_clip": {}, "finetune_clip": {}, "evaluate": {}}
    assert pipeline.select_stages(doc, source="x") == ["pretrain_clip", "finetune_clip", "evaluate"]
    assert pipeline.select_stages(doc, first="finetune_clip", source="x") == ["finetune_clip", "evaluate"]
    assert pipeline.select_stages(doc, last="finetune_clip", source="x") == ["pretrain_clip", "finetune_clip"]
    assert pipeline.select_stages(doc, stage="evaluate", source="x") == ["evaluate"]
    with pytest.raises(ConfigError, match="unknown stage 'train'; allowed: pretrain_clip"):
        pipeline.select_stages(doc, stage="train", source="x")
    with pytest.raises(ConfigError, match="x: no section 'propose_regions'"):
        pipeline.select_stages(doc, first="propose_regions", source="x")


def test_a_complete_stage_is_skipped_without_starting_a_kernel(tmp_path: Path) -> None:
    params = _params(tmp_path)
    cfg = config.stage_config(config.read_params(params), "pretrain_clip", source="x")
    out = artefacts.stage_dir(cfg.run_root, "pretrain_clip")
    out.mkdir(parents=True)
    (out / "w.bin").write_bytes(b"1")
    artefacts.write_manifest(out, stage="pretrain_clip", split="smoke", config={}, config_hash=config.config_hash(cfg),
                             upstream=config.upstream_hashes(cfg), outputs=["w.bin"], summary={}, started_at="t")
    lines: list[str] = []
    sys.modules.pop("papermill", None)
    outcomes = pipeline.run(params, stage="pretrain_clip", echo=lines.append)
    assert [o.skipped for o in outcomes] == [True] and lines == ["[1/1] 00_pretrain_clip: skipped, up to date"]
    assert "papermill" not in sys.modules, "nothing ran, so papermill was not even imported"
    # a changed knob makes it stale; --force too (both would run: check the decision only)
    changed = config.stage_config(config.read_params(_params(tmp_path, lr=1.0e-2)), "pretrain_clip", source="x")
    assert artefacts.staleness(out, config_hash=config.config_hash(changed),
                               upstream=config.upstream_hashes(changed)) == "its config changed"


def test_params_errors_come_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pretrain_clip.max_steps: expected an int, got 'many'"):
        pipeline.run(_params(tmp_path, max_steps="many"), echo=lambda _: None)
    with pytest.raises(ConfigError, match="--set common.sead=1: unknown key common.sead"):
        pipeline.run(_params(tmp_path), overrides=["common.sead=1"], echo=lambda _: None)
    assert not (tmp_path / "runs").exists()


def test_cli_reports_a_typo_in_one_line_and_exit_status_2(tmp_path: Path, capsys) -> None:
    from ezsd_core import cli

    assert cli.main(["run", str(_params(tmp_path)), "--set", "pretrain_clip.lr=1e-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pretrain_clip.lr: expected a float, got '1e-3'" in err


def test_rejecting_bad_params_never_imports_torch(tmp_path: Path) -> None:
    import subprocess

    code = (f"import sys; from ezsd_core import cli; rc = cli.main(['run', {str(_params(tmp_path))!r}, "
            "'--set', 'pretrain_clip.lrr=1']); print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False"] and "unknown key pretrain_clip.lrr" in out.stderr
