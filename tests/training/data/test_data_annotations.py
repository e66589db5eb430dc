"""Annotation parsers against the real official files (facts from official-impls.md §1.7, §2.7, §4.8)."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from training.data import (
    AnnotationError,
    BoxPolicy,
    avgn_misread_mask,
    box_mask,
    flickr_consensus_mask,
    parse_avgn_music_duet,
    parse_avgn_music_json,
    parse_avgn_music_solo,
    parse_dsol_audioset_json,
    parse_dsol_music_json,
    parse_flickr_xml,
    parse_vggss_json,
    read_flickr_annotations,
    read_flickr_test_csv,
    read_id_list,
    read_pairing_csv,
    union_mask,
    vggsound_class_key,
)

CORRUPT = -2.8823037615171176e16


# ------------------------------------------------------------------------------------ VGG-SS


def test_vggss_counts_match_reference(vggss, vggss_raw, meta):
    assert len(vggss) == 5158
    assert len(vggss.classes) == 221
    assert sum(len(e.boxes) for e in vggss) == 5941
    assert vggss.box_count_histogram() == {1: 4619, 2: 385, 3: 94, 4: 37, 5: 18, 6: 3, 7: 2}
    # ints and floats mixed: 126 ints, kept as ints in Box.source
    sources = [v for e in vggss for b in e.boxes for v in b.source]
    assert sum(type(v) is int for v in sources) == 126
    # same order as vggss_test.csv (CRLF, trailing newline)
    assert read_id_list(meta / "ezvsl_vggss_test.csv") == tuple(e.sample_id for e in vggss)
    # canonical boxes always inside [0, 1] after the default clip policy
    assert all(0.0 <= v <= 1.0 for e in vggss for b in e.boxes for v in b.xyxy())


def test_vggss_report_lists_every_corrupt_and_degenerate_box(vggss):
    r = vggss.report
    assert r.policy is BoxPolicy.CLIP
    assert r.n_entries == 5158 and r.n_boxes == 5941
    assert r.n_corrupt_coordinates == 14  # all equal to the corrupt value
    assert sum(v < 0 for e in vggss for b in e.boxes for v in b.source) == 14
    assert all(v == CORRUPT for i in r.corrupt for v in i.source if v < 0)
    assert r.n_corrupt_boxes == 12
    assert r.n_degenerate_boxes == 18  # 12 corrupt ones + 6 merely degenerate
    assert sum(1 for i in r.degenerate if not i.corrupt) == 6
    for sid in ("Db6Hjt0x28k_000056", "7Soo7mXCnq0_000063", "-ANxUxvGASw_000010"):
        assert sid in r.corrupt_ids
    for sid in ("UyCw7pCgYg8_000055", "c-8SLUH5pp4_000030"):
        assert sid in r.degenerate_ids and sid not in r.corrupt_ids
    both = {i.sample_id: i.n_bad_coordinates for i in r.corrupt}
    assert both["7Soo7mXCnq0_000063"] == 2 and both["-ANxUxvGASw_000010"] == 2
    assert both["Db6Hjt0x28k_000056"] == 1
    assert {i.action for i in r.corrupt} == {"clipped"}
    assert {i.action for i in r.degenerate if not i.corrupt} == {"kept"}
    assert "14 corrupt coordinates" in r.summary()


def _ezvsl_gt(raw_boxes):
    """EZ-VSL's VGG-SS GT map, written out literally: clip, *224, astype(int), union."""
    gt = np.zeros((224, 224), np.float32)
    for b in raw_boxes:
        x1, y1, x2, y2 = (np.clip(np.array(b, dtype=np.float64), 0, 1) * 224).astype(int)
        gt[y1:y2, x1:x2] = 1
    return gt


def test_vggss_clip_policy_on_real_corrupt_rows(vggss, vggss_raw):
    by_id = vggss.by_id
    raw = {e["file"]: e["bbox"] for e in vggss_raw}
    # Db6Hjt0x28k_000056: box 0 has y2 = -2.88e16 → clipped to 0 → empty; box 1 is fine.
    e = by_id["Db6Hjt0x28k_000056"]
    assert e.index == 279 and len(e.boxes) == 2
    assert e.boxes[0].source == (0.384375, 0.859375, 0.696875, CORRUPT)
    assert e.boxes[0].xyxy() == (0.384375, 0.859375, 0.696875, 0.0) and e.boxes[0].is_empty
    expected = np.zeros((224, 224), np.float32)
    expected[79:219, 11:168] = 1  # box 1: y 0.35625*224=79.8, 0.98125*224=219.8; x 11.2, 168.7
    np.testing.assert_array_equal(union_mask(e.boxes), expected)
    # every corrupt / degenerate sample reproduces EZ-VSL's clipped map exactly
    for sid in ("7Soo7mXCnq0_000063", "-ANxUxvGASw_000010", "UyCw7pCgYg8_000055", "c-8SLUH5pp4_000030",
                "M1P1xla8rg0_000000", "MKC9LvRivTM_000030"):
        np.testing.assert_array_equal(union_mask(by_id[sid].boxes), _ezvsl_gt(raw[sid]), err_msg=sid)
    assert not union_mask(by_id["MKC9LvRivTM_000030"].boxes).any()  # its only box is corrupt
    # degenerate boxes are kept as written (already inside [0, 1]) and are empty
    u = by_id["UyCw7pCgYg8_000055"].boxes[2]
    assert u.xyxy() == (0.00625, 0.015625, 0.00625, 0.015625) and u.is_empty
    c = by_id["c-8SLUH5pp4_000030"].boxes[0]
    assert c.xyxy() == (1.0, 0.0, 1.0, 1.0) and c.is_empty


def test_vggss_clip_masks_equal_ezvsl_on_whole_file(vggss, vggss_raw):
    # Every one of the 5,158 entries: the canonical boxes give EZ-VSL's exact 224² map.
    for e, r in zip(vggss, vggss_raw):
        assert np.array_equal(union_mask(e.boxes), _ezvsl_gt(r["bbox"])), e.sample_id


def test_vggss_drop_policy(meta):
    d = parse_vggss_json(meta / "ezvsl_vggss.json", policy="drop")
    r = d.report
    assert r.n_dropped_boxes == 18
    assert sum(len(e.boxes) for e in d) == 5941 - 18
    assert r.dropped_entries == ("M1P1xla8rg0_000000", "MKC9LvRivTM_000030")
    assert len(d) == 5156
    by_id = d.by_id
    assert [b.source for b in by_id["Db6Hjt0x28k_000056"].boxes] == [(0.05, 0.35625, 0.753125, 0.98125)]
    assert [b.source for b in by_id["7Soo7mXCnq0_000063"].boxes] == [(0.690625, 0.590625, 0.86875, 0.7062499999999999)]
    assert len(by_id["-ANxUxvGASw_000010"].boxes) == 1
    assert len(by_id["UyCw7pCgYg8_000055"].boxes) == 2
    assert len(by_id["c-8SLUH5pp4_000030"].boxes) == 1
    # entry indices still point into the file
    assert by_id["c-8SLUH5pp4_000030"].index == 4301
    assert all(not b.is_empty for e in d for b in e.boxes)


def test_vggss_error_policy_names_file_entry_and_box(meta, vggss_raw, tmp_path):
    with pytest.raises(AnnotationError) as info:
        parse_vggss_json(meta / "ezvsl_vggss.json", policy="error")
    msg = str(info.value)
    assert "ezvsl_vggss.json" in msg and "entry 16" in msg and "UyCw7pCgYg8_000055" in msg
    assert "degenerate" in msg and isinstance(info.value, ValueError)
    # the real corrupt rows, alone in a file
    for sid in ("Db6Hjt0x28k_000056", "7Soo7mXCnq0_000063", "-ANxUxvGASw_000010"):
        p = tmp_path / f"{sid}.json"
        p.write_text(json.dumps([e for e in vggss_raw if e["file"] == sid]))
        with pytest.raises(AnnotationError, match="corrupt") as info:
            parse_vggss_json(p, policy=BoxPolicy.ERROR)
        assert sid in str(info.value) and str(p) in str(info.value) and "box 0" in str(info.value)
    with pytest.raises(ValueError, match="unknown box policy"):
        parse_vggss_json(meta / "ezvsl_vggss.json", policy="ignore")


# ------------------------------------------------------------------------------------ Flickr


def test_flickr_test_csv(meta):
    ids = read_flickr_test_csv(meta / "ezvsl_flickr_test.csv")
    assert len(ids) == 249 and len(set(ids)) == 249
    assert ids[:2] == ("10000130166", "10007936344")


FLICKR_XML = """<?xml version="1.0"?>
<annotation>
  <filename>{sid}.jpg</filename>
  <object>
    <name>a1</name>
    <bbox><id>1</id><xmin>0</xmin><ymin>32</ymin><xmax>128</xmax><ymax>160</ymax></bbox>
  </object>
  <object>
    <name>a2</name>
    <bbox><id>2</id><xmin>64</xmin><ymin>64</ymin><xmax>200</xmax><ymax>256</ymax></bbox>
  </object>
  <object>
    <bbox><id>3</id><xmin>100</xmin><ymin>10</ymin><xmax>255</xmax><ymax>50</ymax></bbox>
  </object>
</annotation>
"""


def test_flickr_xml_and_consensus_mask(tmp_path):
    p = tmp_path / "10000130166.xml"
    p.write_text(FLICKR_XML.format(sid="10000130166"))
    ann = parse_flickr_xml(p)
    assert ann.sample_id == "10000130166"
    assert len(ann.annotators) == 3  # <filename> has no <bbox> grandchild: not an annotator
    b = ann.annotators[0][0]
    assert b.source == (0, 32, 128, 160) and b.source_format == "xyxy_px256"
    assert b.xyxy() == (0.0, 0.125, 0.5, 0.625)
    # EZ-VSL, literally: int(224*v/256) slices, +1 per box, /2, >1 → 1
    gt = np.zeros((224, 224), np.float32)
    for xmin, ymin, xmax, ymax in [(0, 32, 128, 160), (64, 64, 200, 256), (100, 10, 255, 50)]:
        gt[int(224 * ymin / 256):int(224 * ymax / 256), int(224 * xmin / 256):int(224 * xmax / 256)] += 1
    gt = gt / 2
    gt[gt > 1] = 1
    m = flickr_consensus_mask(ann.annotators)
    np.testing.assert_array_equal(m, gt)
    assert set(np.unique(m)) == {0.0, 0.5, 1.0}
    assert m[28, 0] == 0.5 and m[60, 60] == 1.0  # one annotator / two annotators


def test_flickr_annotations_for_real_ids(meta, tmp_path):
    ids = read_flickr_test_csv(meta / "ezvsl_flickr_test.csv")[:3]
    for sid in ids:
        (tmp_path / f"{sid}.xml").write_text(FLICKR_XML.format(sid=sid))
    anns = read_flickr_annotations(ids, tmp_path)
    assert [a.sample_id for a in anns] == list(ids)
    assert anns.report.n_boxes == 9 and anns.report.ok
    with pytest.raises(FileNotFoundError, match=ids[0]):
        read_flickr_annotations(ids, tmp_path / "nowhere")


@pytest.mark.parametrize(
    "body, where, expected",
    [
        ("<annotation><object><bbox><id>1</id><xmin>0</xmin></bbox></object></annotation>",
         "<bbox> 0", "at least 5 children"),
        ("<annotation><object><bbox><i>1</i><a>x</a><b>1</b><c>2</c><d>3</d></bbox></object></annotation>",
         "<a>", "expected a number, got 'x'"),
        ("<annotation><object><bbox></object></annotation>", "line 1", "invalid XML"),
        ("<annotation><filename>a</filename></annotation>", "root <annotation>", "no box found"),
    ],
)
def test_flickr_xml_malformed(tmp_path, body, where, expected):
    p = tmp_path / "broken.xml"
    p.write_text(body)
    with pytest.raises(AnnotationError) as info:
        parse_flickr_xml(p)
    msg = str(info.value)
    assert str(p) in msg and where in msg and expected in msg


def test_flickr_xml_policy(tmp_path):
    p = tmp_path / "x.xml"
    p.write_text("<a><o><bbox><i/><x>10</x><y>300</y><x>5</x><y>20</y></bbox>"
                 "<bbox><i/><x>0</x><y>0</y><x>10</x><y>10</y></bbox></o></a>")
    ann = parse_flickr_xml(p, policy="drop")
    assert [b.source for b in ann.boxes] == [(0, 0, 10, 10)]
    with pytest.raises(AnnotationError, match="corrupt and degenerate"):
        parse_flickr_xml(p, policy="error")


# ------------------------------------------------------------------------------------ pairings


def test_vggsound_duet_pairing(meta, vggss):
    rows = read_pairing_csv(meta / "avgn_vggsound_duet_test.csv", k=2)
    assert len(rows) == 5158 and all(r.k == 2 for r in rows)
    id1 = [r.ids[0] for r in rows]
    assert id1 == [e.sample_id for e in vggss]  # same order as vggss.json
    assert {r.ids[1] for r in rows} <= set(id1)  # every id2 is an id1
    assert sum(r.classes[0] == r.classes[1] for r in rows) == 22
    assert len({c for r in rows for c in r.classes}) == 221
    cls = {e.sample_id: vggsound_class_key(e.class_name) for e in vggss}
    assert all(cls[i] == c for r in rows for i, c in zip(r.ids, r.classes))
    assert rows[0].sample_id == "zpWuikVorYg_000032+Rtg1SUrxOPY_000130"
    assert rows[-1].line == 5158


def test_vgginstruments_pairings(meta):
    single = read_pairing_csv(meta / "avgn_vgginstruments_test.csv", k=1)
    multi = read_pairing_csv(meta / "avgn_vgginstruments_multi_test.csv", k=2)
    assert len(single) == 446 and len(multi) == 446
    # 446 rows use 36 distinct classes (the reference says 37: that is the train vocabulary)
    assert len({r.classes[0] for r in single}) == 36
    assert [(r.ids[0], r.classes[0]) for r in multi] == [(r.ids[0], r.classes[0]) for r in single]
    assert {r.ids[1] for r in multi} <= {r.ids[0] for r in single}
    assert sum(r.classes[0] == r.classes[1] for r in multi) == 0


def test_trio_and_mixed_pairings(meta, tmp_path):
    duet = read_pairing_csv(meta / "avgn_vggsound_duet_test.csv", k=2)[:4]
    lines = [",".join([r.ids[0], r.classes[0], r.ids[1], r.classes[1], r.ids[0], r.classes[0]]) for r in duet]
    trio = tmp_path / "trio.csv"
    trio.write_text("\r\n".join(lines))
    rows = read_pairing_csv(trio, k=3)
    assert [r.k for r in rows] == [3, 3, 3, 3] and rows[1].ids[:2] == duet[1].ids
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("a,x\nb,y,c,z\n\nd,x,e,y,f,z\n")
    assert [r.k for r in read_pairing_csv(mixed)] == [1, 2, 3]
    with pytest.raises(AnnotationError, match=r"line 2: expected 2 comma-separated columns \(id,class\), got 4"):
        read_pairing_csv(mixed, k=1)


# ------------------------------------------------------------------------------------ MUSIC (AVGN)


def test_music_avgn_solo_and_duet(meta):
    solo = parse_avgn_music_solo(meta / "avgn_music_solo.json")
    duet = parse_avgn_music_duet(meta / "avgn_music_duet.json")
    assert len(solo) == 2124 and len(duet) == 1020
    assert solo.n_sources == 1 and duet.n_sources == 2
    assert solo.report.ok and duet.report.ok
    assert parse_avgn_music_json(meta / "avgn_music_duet.json").n_sources == 2  # auto-detected
    # boxes are x, y, w, h: all satisfy x + w <= 1 and y + h <= 1
    assert all(b.source[0] + b.source[2] <= 1 and b.source[1] + b.source[3] <= 1 for e in solo for b in e.boxes)

    def misread_degenerate(b):  # "x2" <= "x1" or "y2" <= "y1" when read as x1, y1, x2, y2
        return b.source[2] <= b.source[0] or b.source[3] <= b.source[1]

    assert sum(misread_degenerate(e.boxes[0]) for e in solo) == 1647
    assert sum(misread_degenerate(e.boxes[1]) for e in duet) == 1016
    assert sum(misread_degenerate(e.boxes[0]) for e in duet) == 11
    # AVGN's as-coded map is empty for one more solo box (truncation): 1,648 of 2,124
    assert sum(not avgn_misread_mask(e.boxes[0]).any() for e in solo) == 1648
    assert sum(not box_mask(e.boxes[0]).any() for e in solo) == 0
    # test csvs (CRLF; solo has id,class) list the same ids in the same order
    solo_rows = read_pairing_csv(meta / "avgn_music_solo_test.csv", k=1)
    assert [(r.ids[0], r.classes[0]) for r in solo_rows] == [(e.sample_id, e.classes[0]) for e in solo]
    assert read_id_list(meta / "avgn_music_duet_test.csv") == tuple(e.sample_id for e in duet)
    assert (meta / "avgn_music_solo_test.csv").read_bytes().count(b"\r\n") == 2123
    assert len({e.video_id for e in solo}) == 20 and len({e.video_id for e in duet}) == 6
    assert Counter(e.classes for e in duet).most_common(1)[0] == (("cello", "acoustic_guitar"), 1012)


def test_real_entries_masks_equal_hand_computed_slices(meta, vggss):
    # VGG-SS zpWuikVorYg_000032 [0.403125, 0.253125, 0.6, 0.75]: x 90.3→90, 134.4→134; y 56.7→56, 168
    e = vggss[0]
    assert e.sample_id == "zpWuikVorYg_000032"
    exp = np.zeros((224, 224), np.float32)
    exp[56:168, 90:134] = 1
    np.testing.assert_array_equal(union_mask(e.boxes), exp)
    # VGG-SS ORaz32CQ29k_000130, two boxes: [0.121875,0.171875,0.6,0.853125] ∪ [0.765625,0.275,0.984375,0.565625]
    e = vggss[9]
    assert e.sample_id == "ORaz32CQ29k_000130"
    exp = np.zeros((224, 224), np.float32)
    exp[38:191, 27:134] = 1
    exp[61:126, 171:220] = 1
    np.testing.assert_array_equal(union_mask(e.boxes), exp)
    # MUSIC solo -_-TDDxoaAc_000_00000 x,y,w,h = [0.328125, 0.1222…, 0.234375, 0.85]:
    # x 73.5→73, (x+w)·224 = 126.0 → 126; y 27.38→27, (y+h)·224 = 217.8→217
    solo = parse_avgn_music_solo(meta / "avgn_music_solo.json")
    b = solo[0].boxes[0]
    assert solo[0].sample_id == "-_-TDDxoaAc_000_00000" and solo[0].video_id == "-_-TDDxoaAc"
    exp = np.zeros((224, 224), np.float32)
    exp[27:217, 73:126] = 1
    np.testing.assert_array_equal(box_mask(b), exp)
    # AVGN's misreading of the same numbers: x1 = 73 > "x2" = int(0.234375·224) = 52 → empty
    assert not avgn_misread_mask(b).any()
    # DSOL 4Oy5VmaacaI_0_1000/frame_013/00411.jpg normbox [0.35, 0.0, 0.3734375, 0.99444…]:
    # x 78.4→78, (x+w)·224 = 162.05→162; y 0, (y+h)·224 = 222.75→222
    dsol = parse_dsol_music_json(meta / "dsol_music_solotest.json")
    f = dsol[0]
    assert f.key == "4Oy5VmaacaI_0_1000/frame_013/00411.jpg"
    exp = np.zeros((224, 224), np.float32)
    exp[0:222, 78:162] = 1
    np.testing.assert_array_equal(box_mask(f.boxes[0]), exp)


# ------------------------------------------------------------------------------------ DSOL


def test_dsol_music_json(meta):
    solo = parse_dsol_music_json(meta / "dsol_music_solotest.json")
    duet = parse_dsol_music_json(meta / "dsol_music_duettest.json")
    assert len(solo) == 13472 and solo.box_count_histogram() == {0: 1116, 1: 12356}
    assert len(duet) == 11512 and duet.box_count_histogram() == {0: 1228, 1: 5533, 2: 4751}
    assert solo.report.ok and duet.report.ok
    f = solo[0]
    assert (f.video_id, f.second, f.frame_index) == ("4Oy5VmaacaI_0_1000", 13, 411)
    assert (f.width, f.height) == (640, 360)  # from the misspelt 'wdith'
    assert f.pixel_boxes == ((224, 0, 239, 358),)
    assert f.boxes[0].category == 1 and f.boxes[0].source_format == "xywh_norm"
    assert {b.category for e in duet for b in e.boxes} == {1, 3, 8, 10, 11, 12}
    assert {b.category for e in solo for b in e.boxes} == {1, 3, 8, 10, 11, 12, 13}
    assert all(len(e.categories) == len(e.boxes) for e in duet)  # two boxes = two categories
    # normbox = box / (wdith, height)
    assert all(math.isclose(b.source[0], p[0] / e.width) for e in solo for b, p in zip(e.boxes, e.pixel_boxes))


def test_dsol_audioset_json(meta):
    a = parse_dsol_audioset_json(meta / "dsol_audioset_box.json")
    assert len(a) == 4503 and a.report.ok
    counts = Counter(len(e.boxes) for e in a)
    assert max(counts) == 16 and counts[0] == 30
    assert {b.category for e in a for b in e.boxes} == set(range(13))
    assert (a[0].video_id, a[0].second) == ("8LYWfpPUokc", 3)


# ------------------------------------------------------------------------------------ malformed files


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_malformed_json_files(meta, vggss_raw, tmp_path):
    bad = _write(tmp_path, "truncated.json", (meta / "ezvsl_vggss.json").read_text()[:5000])
    with pytest.raises(AnnotationError) as info:
        parse_vggss_json(bad)
    assert str(bad) in str(info.value) and "invalid JSON" in str(info.value) and "line 1 column" in str(info.value)

    entries = json.loads(json.dumps(vggss_raw[:5]))
    del entries[3]["bbox"]
    p = _write(tmp_path, "nobbox.json", json.dumps(entries))
    with pytest.raises(AnnotationError, match=r"nobbox\.json: entry 3: missing key 'bbox'; expected"):
        parse_vggss_json(p)

    entries = json.loads(json.dumps(vggss_raw[:5]))
    entries[2]["bbox"][0][1] = "0.5"
    p = _write(tmp_path, "string.json", json.dumps(entries))
    with pytest.raises(AnnotationError, match=r"entry 2 \('JIemsK_0lXc_000364'\), box 0: expected a number for x1,y1,x2,y2, got '0.5'"):
        parse_vggss_json(p)

    entries = json.loads(json.dumps(vggss_raw[:5]))
    entries[1]["bbox"][0] = [0.1, 0.2, 0.3]
    p = _write(tmp_path, "three.json", json.dumps(entries))
    with pytest.raises(AnnotationError, match="list of 4 numbers"):
        parse_vggss_json(p)

    p = _write(tmp_path, "dict.json", json.dumps({"a": 1}))
    with pytest.raises(AnnotationError, match="expected a JSON list"):
        parse_vggss_json(p)

    music = json.loads((meta / "avgn_music_duet.json").read_text())[:3]
    del music[1]["bbox_src2"]
    p = _write(tmp_path, "duet.json", json.dumps(music))
    with pytest.raises(AnnotationError, match=r"duet\.json: entry 1: missing key 'bbox_src2'"):
        parse_avgn_music_duet(p)
    music = json.loads((meta / "avgn_music_solo.json").read_text())[:3]
    music[2]["file"] = "not_a_music_id"
    p = _write(tmp_path, "solo.json", json.dumps(music))
    with pytest.raises(AnnotationError, match="MUSIC frame id"):
        parse_avgn_music_solo(p)

    raw = json.loads((meta / "dsol_music_solotest.json").read_text())
    keys = list(raw)[:4]
    dsol = json.loads(json.dumps({k: raw[k] for k in keys}))
    del dsol[keys[2]]["wdith"]
    p = _write(tmp_path, "dsol.json", json.dumps(dsol))
    with pytest.raises(AnnotationError, match=r"entry 2 .*missing key 'wdith'"):
        parse_dsol_music_json(p)
    dsol = {k: raw[k] for k in keys}
    dsol["no_frame_dir.jpg"] = raw[keys[0]]
    p = _write(tmp_path, "dsol2.json", json.dumps(dsol))
    with pytest.raises(AnnotationError, match=r"entry 4 \('no_frame_dir.jpg'\): expected a key"):
        parse_dsol_music_json(p)

    aud = {"v/1": {"bbox": [{"category": 13, "normbox": [0.1, 0.1, 0.2, 0.2]}]}}
    p = _write(tmp_path, "aud.json", json.dumps(aud))
    with pytest.raises(AnnotationError, match=r"entry 0 \('v/1'\), box 0: expected 'category' in 0\.\.12"):
        parse_dsol_audioset_json(p)


def test_malformed_csv_files(meta, tmp_path):
    lines = (meta / "avgn_vggsound_duet_test.csv").read_text().splitlines()[:6]
    lines[2] += ",extra"
    p = _write(tmp_path, "duet.csv", "\n".join(lines))
    with pytest.raises(AnnotationError) as info:
        read_pairing_csv(p, k=2)
    assert str(p) in str(info.value)
    assert "line 3: expected 4 comma-separated columns (id,class,id,class), got 5" in str(info.value)

    lines = (meta / "avgn_vggsound_duet_test.csv").read_text().splitlines()[:6]
    lines[4] = "id,,id2,cls"
    p = _write(tmp_path, "empty.csv", "\n".join(lines))
    with pytest.raises(AnnotationError, match=r"line 5: empty class in column 2"):
        read_pairing_csv(p, k=2)

    lines = (meta / "ezvsl_flickr_test.csv").read_text().splitlines()[:10]
    lines[7] = lines[7].split(",")[0]
    p = _write(tmp_path, "flickr.csv", "\r\n".join(lines))
    with pytest.raises(AnnotationError, match=r"flickr\.csv: line 8: expected 2 comma-separated columns"):
        read_flickr_test_csv(p)

    p = _write(tmp_path, "ids.csv", "a\nb,c\n")
    with pytest.raises(AnnotationError, match="line 2: expected 1 column"):
        read_id_list(p)
    p = _write(tmp_path, "dup.csv", "a\nb\na\n")
    with pytest.raises(AnnotationError, match="duplicate id 'a'"):
        read_id_list(p)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_id_list(tmp_path / "missing.csv")
