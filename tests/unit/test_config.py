from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ezsd_core import config
from ezsd_core.config import ConfigError

COMMON = {"split": "smoke", "split_style": None, "base_names": None, "novel_names": None,
          "data_root": "data/smoke", "train_annotations": "coco/annotations/instances_train.json",
          "val_annotations": "coco/annotations/instances_val.json", "train_images": "coco/train",
          "val_images": "coco/val", "run_root": "runs/smoke", "seed": 0, "device": "cpu", "num_workers": 0,
          "force": False}
STAGE = {"clip_model": "ezsd-tiny-cnn", "max_steps": 2, "batch_size": 8, "lr": 1.0e-3, "text_lr": 1.0e-2,
         "weight_decay": 0.0, "warmup_steps": 0, "logit_scale_init": 1.0, "logit_scale_lr": 0.06, "augment_prob": 0.5,
         "image_warmup_steps": 0, "backbone_steps": 0, "backbone_lr": 1.0e-3, "log_every": 1}


def _doc(**stage_changes) -> dict:
    return {"common": dict(COMMON), "pretrain_clip": {**STAGE, **stage_changes}}


def _cfg(doc: dict, *overrides: str) -> config.PretrainClipConfig:
    return config.stage_config(doc, "pretrain_clip", source="params/smoke.yaml", overrides=overrides)


def test_valid_params_give_typed_config() -> None:
    cfg = _cfg(_doc(lr=1))
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0  # ints are promoted to floats
    assert cfg.data_root == Path("data/smoke")
    with pytest.raises(AttributeError):
        cfg.lr = 2.0  # frozen


@pytest.mark.parametrize("changes,fragment", [
    ({"lrr": 1.0}, "unknown key pretrain_clip.lrr; allowed keys:"),
    ({"lr": "1e-4"}, "pretrain_clip.lr: expected a float, got '1e-4' (YAML reads an exponent without a dot"),
    ({"max_steps": "ten"}, "pretrain_clip.max_steps: expected an int, got 'ten'"),
    ({"max_steps": True}, "pretrain_clip.max_steps: expected an int, got True"),
    ({"batch_size": 1}, "pretrain_clip.batch_size: got 1; allowed range [2, inf]"),
    ({"clip_model": None}, "pretrain_clip.clip_model: expected a string, got None"),
])
def test_bad_params_fail_in_one_line_naming_file_key_value_and_allowed(changes: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(_doc(**changes))
    msg = str(e.value)
    assert msg.startswith("params/smoke.yaml: ") and fragment in msg and "\n" not in msg


def test_missing_key_is_an_error() -> None:
    doc = _doc()
    del doc["pretrain_clip"]["warmup_steps"]
    with pytest.raises(ConfigError, match="missing key warmup_steps"):
        _cfg(doc)


def test_overrides_are_parsed_as_yaml_and_checked() -> None:
    assert _cfg(_doc(), "pretrain_clip.lr=2.0e-3", "common.seed=3").seed == 3
    with pytest.raises(ConfigError, match=r"--set pretrain_clip.lrr=1: unknown key pretrain_clip.lrr"):
        _cfg(_doc(), "pretrain_clip.lrr=1")
    with pytest.raises(ConfigError, match=r"^--set common.seed=-1: common.seed: got -1; allowed range"):
        _cfg(_doc(), "common.seed=-1")
    with pytest.raises(ConfigError, match=r"^--set pretrain_clip.lr=1e-3: pretrain_clip.lr: expected a float"):
        _cfg(_doc(), "pretrain_clip.lr=1e-3")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        _cfg(_doc(), "seed=3")
    with pytest.raises(ConfigError, match="unknown section 'nope'"):
        _cfg(_doc(), "nope.x=1")


def test_unknown_stage_section_and_missing_section_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown stage 'pretrain'"):
        config.stage_config(_doc(), "pretrain", source="x.yaml")
    doc = _doc()
    doc["pretrain_clipp"] = doc.pop("pretrain_clip")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="unknown section 'pretrain_clipp'; allowed: common, pretrain_clip"):
        config.read_params(tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="no section 'pretrain_clip'; stages in this file: none"):
        config.stage_config({"common": COMMON}, "pretrain_clip", source="x.yaml")


def test_config_hash_ignores_runtime_fields_only() -> None:
    base = _cfg(_doc())
    same = _cfg(_doc(log_every=7), "common.device=cuda", "common.run_root=/elsewhere", "common.force=true")
    assert config.config_hash(base) == config.config_hash(same)
    assert config.config_hash(base) != config.config_hash(_cfg(_doc(lr=2.0e-3)))
    assert config.config_hash(base) != config.config_hash(_cfg(_doc(), "common.seed=1"))


def test_load_config_picks_fields_from_a_notebook_namespace() -> None:
    namespace = {**COMMON, **STAGE, "In": [], "get_ipython": object(), "_": None}
    cfg = config.load_config(config.PretrainClipConfig, namespace)
    assert cfg.clip_model == "ezsd-tiny-cnn"
    with pytest.raises(ConfigError, match="missing key seed"):
        config.load_config(config.PretrainClipConfig, {k: v for k, v in namespace.items() if k != "seed"})


@pytest.mark.parametrize("stage,old,new", [(s, o, n) for s, ren in config.RENAMED.items() for o, n in ren.items()])
def test_an_old_knob_name_says_its_new_name_in_one_line(stage: str, old: str, new: str) -> None:
    doc = config.read_params("params/smoke.yaml")
    section = dict(doc[stage])
    section[old] = section.pop(new)
    with pytest.raises(config.ConfigError) as e:
        config.stage_config({**doc, stage: section}, stage, source="params/old.yaml")
    assert str(e.value) == f"params/old.yaml: {stage}.{old} is now called {new} (each knob's name says whose it is); " \
                           "rename it"
    with pytest.raises(config.ConfigError, match=f"--set {stage}.{old}=1: {stage}.{old} is now called {new}$"):
        config.stage_config(doc, stage, source="params/smoke.yaml", overrides=[f"{stage}.{old}=1"])


def test_near_twin_knobs_of_different_stages_no_longer_share_a_name() -> None:
    """The same word means the same kind of thing, and a prefix says whose it is."""
    fields = {s: set(config.field_names(c)) - set(config.field_names(config.CommonConfig))
              for s, c in config.STAGE_CONFIGS.items()}
    old = {o for ren in config.RENAMED.values() for o in ren}
    assert not old & set().union(*fields.values())
    assert {"region_anchor_sizes", "region_nms_thresh"} <= fields["propose_regions"]
    assert {"rpn_anchor_sizes", "rpn_anchor_ratios"} <= fields["train_detector"]
    assert {"box_score_thresh", "box_nms_thresh", "box_detections_per_img"} <= fields["evaluate"]
    assert "max_steps" in fields["pretrain_clip"] and "max_steps" in fields["train_detector"]


@pytest.mark.parametrize("common,fragment", [
    ({"split": "coco_50_15"}, "common.split: unknown split 'coco_50_15'; allowed: smoke, toy_coco"),
    ({"base_names": ["a"]}, "common.split_style: null, but base_names / novel_names are set"),
    ({"split": "photos", "split_style": "coco", "base_names": ["a"]}, "common.novel_names: null, but split_style"),
    ({"split": "photos", "split_style": "voc", "base_names": ["a"], "novel_names": ["b"]},
     "common.split_style: got 'voc'; allowed: 'coco', 'lvis'"),
    ({"split": "smoke", "split_style": "coco", "base_names": ["a"], "novel_names": ["b"]},
     "common.split: 'smoke' is a built-in split"),
    ({"split": "photos", "split_style": "coco", "base_names": ["a", "b"], "novel_names": ["b"]},
     "base_names / novel_names: 'b' in both"),
    ({"split": "photos", "split_style": "coco", "base_names": 3, "novel_names": ["b"]},
     "common.base_names: expected a list of a string or a string or null, got 3"),
])
def test_split_declaration_errors_are_one_line(common: dict, fragment: str) -> None:
    doc = {"common": {**COMMON, **common}, "pretrain_clip": dict(STAGE)}
    with pytest.raises(ConfigError) as e:
        _cfg(doc)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_declared_split_takes_lists_or_a_names_file() -> None:
    decl = {"split": "photos", "split_style": "lvis", "base_names": ["a", "b"], "novel_names": "novel.txt"}
    cfg = _cfg({"common": {**COMMON, **decl}, "pretrain_clip": dict(STAGE)})
    assert cfg.base_names == ("a", "b") and cfg.novel_names == "novel.txt" and cfg.split_style == "lvis"


def test_a_config_recorded_before_declared_splits_still_loads() -> None:
    """Manifests written before split_style / base_names / novel_names existed load with a built-in split;
    a params file must still give every key."""
    old = {k: v for k, v in {**COMMON, **STAGE}.items() if k not in config.ADDED_FIELDS}
    cfg = config.load_config(config.PretrainClipConfig, old)
    assert cfg.split == "smoke" and cfg.split_style is None and cfg.base_names is None
    with pytest.raises(ConfigError, match="missing key split_style"):
        config.load_config(config.PretrainClipConfig, old, strict=True)
