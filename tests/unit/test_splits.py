from __future__ import annotations

import pytest
from realformat import coco_categories, lvis_categories

from ezsd_core import splits


def test_coco_48_17_roles_and_vocabularies() -> None:
    s = splits.split_from_categories("coco_48_17", coco_categories())
    ref = splits.reference_lists()
    assert len(s.ids("base")) == 48 and len(s.ids("novel")) == 17 and len(s.ids("all")) == 65
    assert len(s.ids("proposal")) == 80, "proposals are scored over all 80 COCO names (spec §3)"
    assert s.prompt_names("base") == tuple(ref["coco_zeroshot_base48"])
    assert s.prompt_names("novel") == tuple(ref["coco_zeroshot_novel17"])
    assert s.role_of(5) == "novel" and s.role_of(1) == "base" and s.role_of(10) == "other"  # airplane, person, light
    lut = s.label_map("base")
    assert list(lut.values()) == list(range(1, 49)) and list(lut) == sorted(lut)
    assert s.label_map("all")[5] == 5  # airplane is the 5th of the 65 in id order


def test_coco_60_20_is_the_voc_split() -> None:
    s = splits.split_from_categories("coco_60_20", coco_categories())
    assert len(s.ids("base")) == 60 and len(s.ids("novel")) == 20 and "person" in s.prompt_names("novel")


def test_lvis_splits_are_derived_from_frequency() -> None:
    ref = splits.reference_lists()
    a = splits.split_from_categories("lvis_866_337", lvis_categories())
    assert set(a.prompt_names("base")) == set(ref["lvis_freq_plus_comm866_in_id_order"])
    assert set(a.prompt_names("novel")) == set(ref["lvis_rare337"])
    assert len(a.ids("proposal")) == 1203
    assert a.prompt_names("all") == tuple(ref["lvis_all1203_prompt_names_in_id_order"])  # json 'stero' fixed
    b = splits.split_from_categories("lvis_405_798", lvis_categories())
    assert set(b.prompt_names("base")) == set(ref["lvis_freq405"])
    assert len(b.ids("novel")) == 798 and len(b.ids("proposal")) == 866, "rare names never propose (spec §3)"


def test_toy_splits() -> None:
    from ezsd_core.toyshapes import CATEGORY_NAMES
    cats = [{"id": i + 1, "name": n, "frequency": "f" if i < 12 else "c" if i < 18 else "r"}
            for i, n in enumerate(CATEGORY_NAMES)]
    s = splits.split_from_categories("toy_coco", cats)
    assert s.prompt_names("novel") == tuple(n for n in CATEGORY_NAMES if n in splits.TOY_NOVEL)
    assert len(s.ids("base")) == 18 and len(s.ids("all")) == 24
    # the "other" shapes, as COCO's 15 unused names: proposal vocabulary only, never base or novel
    assert s.prompt_names("proposal") == CATEGORY_NAMES and len(splits.TOY_OTHER) == 5
    assert {s.role_of(c) for c in s.ids("proposal")} - {s.role_of(c) for c in s.ids("all")} == {"other"}
    cats = [c for c in cats if c["name"] not in splits.TOY_OTHER]  # the LVIS world has no "other" shape
    lv = splits.split_from_categories("toy_lvis", cats)
    assert lv.style == "lvis" and len(lv.ids("novel")) == 6 and lv.frequency[-1] == "r"


def test_bad_inputs_are_explained() -> None:
    with pytest.raises(ValueError, match="unknown split 'coco_50_15'; allowed: smoke, toy_coco"):
        splits.split_from_categories("coco_50_15", coco_categories())
    with pytest.raises(ValueError, match="needs the 80 COCO categories"):
        splits.split_from_categories("coco_48_17", coco_categories()[:70])
    with pytest.raises(ValueError, match="needs 'frequency'"):
        splits.split_from_categories("lvis_866_337", coco_categories())


# ---------------------------------------------------------------------------------------------
# declared splits (issue 11 §2)

CATS = [{"id": 11, "name": "astronaut"}, {"id": 12, "name": "rocket"}, {"id": 13, "name": "tabby cat"},
        {"id": 14, "name": "flag"}, {"id": 15, "name": "color wheel"}]


def test_builtin_splits_are_registry_entries() -> None:
    assert tuple(splits.registry()) == splits.SPLIT_IDS
    assert {s: splits.split_style(s) for s in splits.SPLIT_IDS} == {
        "smoke": "coco", "toy_coco": "coco", "toy_lvis": "lvis", "coco_48_17": "coco", "coco_60_20": "coco",
        "lvis_866_337": "lvis", "lvis_405_798": "lvis"}


def test_declared_split_from_inline_lists_and_a_names_file(tmp_path) -> None:
    (tmp_path / "novel.txt").write_text("# novel\nflag\n\n color wheel \n")
    d = splits.declared_split("photos", "coco", ["astronaut", "rocket"], "novel.txt", root=tmp_path)
    s = splits.split_from_categories(d, CATS)
    assert s.prompt_names("base") == ("astronaut", "rocket") and s.ids("novel") == (14, 15)
    assert s.role_of(13) == "other" and s.ids("all") == (11, 12, 14, 15), "a name in neither list is 'other'"
    assert s.ids("proposal") == (11, 12, 13, 14, 15) and s.style == "coco" and s.name == "photos"


def test_declared_lvis_split_keeps_frequencies_and_needs_them() -> None:
    cats = [{**c, "frequency": "fcrfc"[k]} for k, c in enumerate(CATS)]
    s = splits.split_from_categories(splits.declared_split("p", "lvis", ["astronaut"], ["flag"]), cats)
    assert s.style == "lvis" and s.frequency == ("f", "c", "r", "f", "c") and s.ids("novel") == (14,)
    with pytest.raises(ValueError, match="frequency"):
        splits.split_from_categories(splits.declared_split("p", "lvis", ["astronaut"], ["flag"]), CATS)


@pytest.mark.parametrize("base,novel,fragment", [
    (["astronaut", "flag"], ["flag"], r"^base_names / novel_names: 'flag' in both"),
    (["astronaut", "astronaut"], ["flag"], r"^base_names: 'astronaut' listed twice$"),
    ([], ["flag"], r"^base_names: empty"),
    (["astronaut"], "missing.txt", r"^novel_names: cannot read names file .*missing.txt"),
])
def test_declared_split_errors_are_one_line(base, novel, fragment, tmp_path) -> None:
    with pytest.raises(ValueError, match=fragment) as e:
        splits.declared_split("p", "coco", base, novel, root=tmp_path)
    assert "\n" not in str(e.value)


def test_declared_names_missing_from_the_json_are_named() -> None:
    d = splits.declared_split("p", "coco", ["astronaut", "zebra"], ["flag", "yak"])
    with pytest.raises(ValueError, match=r"^base_names: 'zebra' not among the 5 category names") as e:
        splits.split_from_categories(d, CATS)
    assert "\n" not in str(e.value)


def test_declared_split_may_not_reuse_a_builtin_id_or_an_unknown_style() -> None:
    with pytest.raises(ValueError, match="built-in split"):
        splits.declared_split("coco_48_17", "coco", ["a"], ["b"])
    with pytest.raises(ValueError, match=r"^split_style: got 'voc'; allowed: coco, lvis$"):
        splits.declared_split("p", "voc", ["a"], ["b"])


def test_a_names_file_is_part_of_the_data_lineage(tmp_path) -> None:
    """Editing a declared split's names file makes every stage stale, as editing the JSON does."""
    from ezsd_core import config, lineage

    (tmp_path / "novel.txt").write_text("flag\n")
    (tmp_path / "train.json").write_text("{}")
    doc = {"common": {"split": "photos", "split_style": "coco", "base_names": ["astronaut"],
                      "novel_names": "novel.txt", "data_root": str(tmp_path), "train_annotations": "train.json",
                      "val_annotations": "train.json", "train_images": ".", "val_images": ".", "run_root": "r",
                      "seed": 0, "device": "cpu", "num_workers": 0, "force": False},
           "evaluate": {"vocabulary": "all", "box_score_thresh": 0.0, "box_nms_thresh": 0.5,
                        "box_detections_per_img": 10, "image_set": "all", "batch_size": 1}}
    cfg = config.stage_config(doc, "evaluate", source="x.yaml")
    assert splits.names_files(cfg) == [tmp_path / "novel.txt"]
    before = lineage.data_fingerprint(cfg)
    (tmp_path / "novel.txt").write_text("flag\ncolor wheel\n")
    assert lineage.data_fingerprint(cfg) != before
