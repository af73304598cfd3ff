"""Every params file validates for every stage it has; YAML 1.1 traps are absent from the raw text;
the YAML keys equal the dataclass fields (and, via test_notebooks, the parameters cells)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ezsd_core import config, splits

PARAMS = sorted((Path(__file__).resolve().parents[2] / "params").glob("*.yaml"))
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "params/examples").glob("*.yaml"))  # declared splits


def test_one_params_file_per_split() -> None:
    assert {p.stem for p in PARAMS} == set(splits.SPLIT_IDS)


@pytest.mark.parametrize("path", PARAMS + EXAMPLES, ids=[p.stem for p in PARAMS + EXAMPLES])
def test_params_validate_for_every_stage(path: Path) -> None:
    doc = config.read_params(path)
    assert doc["common"]["split"] == path.stem
    assert set(doc["common"]) == set(config.field_names(config.CommonConfig))
    for stage, cls in config.STAGE_CONFIGS.items():
        if stage not in doc:
            continue
        cfg = config.stage_config(doc, stage, source=str(path))
        assert set(doc["common"]) | set(doc[stage]) == set(config.field_names(cls))
        assert not set(doc[stage]) & set(doc["common"]), "a knob lives in exactly one section"
        assert isinstance(cfg, cls)


def test_examples_declare_their_own_split() -> None:
    assert EXAMPLES, "params/examples holds the declared-split example of the README"
    for path in EXAMPLES:
        common = config.read_params(path)["common"]
        assert common["split"] not in splits.SPLIT_IDS and common["split_style"] in splits.STYLES


@pytest.mark.parametrize("path", PARAMS + EXAMPLES, ids=[p.stem for p in PARAMS + EXAMPLES])
def test_params_have_no_yaml_traps(path: Path) -> None:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        value = line.split("#", 1)[0].partition(":")[2].strip()
        if not value:
            continue
        assert not re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value), f"{path.name}:{n}: float without a dot: {value}"
        assert value.lower() not in {"yes", "no", "on", "off", "y", "n"}, f"{path.name}:{n}: YAML-1.1 bool {value}"
        assert not re.fullmatch(r"0\d+", value), f"{path.name}:{n}: leading-zero integer {value}"
        assert not (yaml.safe_load(value) is None and value != "null"), f"{path.name}:{n}: write null explicitly"
