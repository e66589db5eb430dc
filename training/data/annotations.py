"""Parsers for the official annotation files (pure: no media is touched).

Each parser returns typed, frozen records whose boxes are :class:`~training.data.boxes.Box`
objects in the canonical normalised x1, y1, x2, y2 form (the file's own numbers are kept in
``Box.source``). Files with boxes come back with a :class:`~training.data.boxes.BoxReport` that
lists every corrupt or degenerate box and what the :class:`~training.data.boxes.BoxPolicy` did.

Any layout problem (invalid JSON or XML, a missing key, a wrong column count, a non-numeric
coordinate, a malformed id) raises :class:`~training.data.errors.AnnotationError` naming the
file, the line or entry, and what was expected. A missing file raises ``FileNotFoundError``.

Formats (details and quirks: ``shared/reference/official-impls.md`` §1.7, §2.7, §4.8, §6):

=================================  ============================================================
parser                             file
=================================  ============================================================
:func:`parse_flickr_xml`           Flickr-SoundNet test XML (one per image, several annotators,
                                   256-px x1,y1,x2,y2)
:func:`read_flickr_test_csv`       EZ-VSL ``flickr_test.csv`` (``id,int``; 2nd column unused)
:func:`read_id_list`               one id per line (``vggss_test.csv``, ``music_duet_test.csv``)
:func:`parse_vggss_json`           EZ-VSL ``vggss.json`` (normalised x1,y1,x2,y2, corrupt rows)
:func:`read_pairing_csv`           ``id,class`` × k rows: VGGSound single/duet/trio/mixed,
                                   VGGSound-Instruments (single and multi), MUSIC solo test csv
:func:`parse_avgn_music_json`      AVGN ``music_solo.json`` / ``music_duet.json`` (x,y,w,h)
:func:`parse_dsol_music_json`      DSOL ``solotest.json`` / ``duettest.json``
:func:`parse_dsol_audioset_json`   DSOL ``audioset_box.json``
=================================  ============================================================
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from training.data.boxes import Box, BoxIssue, BoxPolicy, BoxReport
from training.data.errors import AnnotationError

__all__ = [
    "MUSIC_CLASSES",
    "DSOL_MUSIC_CATEGORIES",
    "FLICKR_PIXEL_SPACE",
    "vggsound_class_key",
    "music_video_id",
    "FlickrAnnotation",
    "FlickrAnnotations",
    "parse_flickr_xml",
    "read_flickr_annotations",
    "read_flickr_test_csv",
    "read_id_list",
    "VggssEntry",
    "VggssAnnotations",
    "parse_vggss_json",
    "PairingRow",
    "read_pairing_csv",
    "MusicEntry",
    "MusicAnnotations",
    "parse_avgn_music_json",
    "parse_avgn_music_solo",
    "parse_avgn_music_duet",
    "DsolFrame",
    "DsolAnnotations",
    "parse_dsol_music_json",
    "DsolAudiosetEntry",
    "DsolAudiosetAnnotations",
    "parse_dsol_audioset_json",
]

PathArg = str | PathLike[str]

#: The 11 MUSIC solo instruments, sorted: AVGN's class vocabulary (sorted unique class strings of
#: its MUSIC train list) and DSOL's class index order.
MUSIC_CLASSES: tuple[str, ...] = (
    "accordion",
    "acoustic_guitar",
    "cello",
    "clarinet",
    "erhu",
    "flute",
    "saxophone",
    "trumpet",
    "tuba",
    "violin",
    "xylophone",
)

#: DSOL MUSIC ``category_id`` (detector ids) → instrument (``official-impls.md`` §4.6).
DSOL_MUSIC_CATEGORIES: Mapping[int, str] = {
    1: "cello",
    3: "acoustic_guitar",
    8: "saxophone",
    10: "trumpet",
    11: "violin",
    12: "flute",
    13: "accordion",
}

#: Flickr-SoundNet boxes are drawn in a 256×256 pixel space.
FLICKR_PIXEL_SPACE = 256.0

_MUSIC_ID = re.compile(r"^(?P<video>.+)_(?P<clip>\d{3})_(?P<frame>\d{5})$")
_DSOL_KEY = re.compile(r"^(?P<video>[^/]+)/frame_(?P<second>\d+)/(?P<frame>\d+)\.jpg$")
_AUDIOSET_KEY = re.compile(r"^(?P<video>[^/]+)/(?P<second>\d+)$")
_BOUND_TOL = 1e-9  # x + w may exceed 1 by a rounding ulp


def vggsound_class_key(name: str) -> str:
    """Class name as AVGN's csv files write it: commas removed, spaces → underscores.

    ``"female speech, woman speaking"`` (vggss.json) → ``"female_speech_woman_speaking"``
    (``vggsound_duet_test.csv``). Idempotent.
    """
    return name.replace(",", "").replace(" ", "_")


def music_video_id(frame_id: str) -> str:
    """Video id of a MUSIC frame id ``YTID_ccc_fffff`` (AVGN: ``id[:-10]``)."""
    m = _MUSIC_ID.match(frame_id)
    if m is None:
        raise ValueError(f"{frame_id!r} is not a MUSIC frame id 'YTID_ccc_fffff'")
    return m.group("video")


# --------------------------------------------------------------------------------------------
# low-level readers


def _read_text(path: PathArg) -> str:
    data = Path(path).read_bytes()  # FileNotFoundError names the path
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"byte {exc.start}", "expected UTF-8 text") from None


def _load_json(path: PathArg) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            path, f"line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}"
        ) from None


def _csv_rows(path: PathArg) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped fields) of every non-blank line; CRLF and LF both accepted."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if not row or all(not f.strip() for f in row):
                continue
            yield reader.line_num, [f.strip() for f in row]
    except csv.Error as exc:
        raise AnnotationError(path, f"line {reader.line_num}", f"unreadable CSV: {exc}") from None


def _number(value: Any, path: PathArg, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnnotationError(path, where, f"expected a number for {what}, got {value!r}")
    return value


def _four_numbers(value: Any, path: PathArg, where: str, what: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise AnnotationError(path, where, f"expected {what} as a list of 4 numbers, got {value!r}")
    return tuple(_number(v, path, where, what) for v in value)


def _require(obj: Any, keys: Sequence[str], path: PathArg, where: str, layout: str) -> None:
    if not isinstance(obj, dict):
        raise AnnotationError(path, where, f"expected an object {layout}, got {type(obj).__name__}")
    for k in keys:
        if k not in obj:
            raise AnnotationError(path, where, f"missing key {k!r}; expected {layout}")


def _string(value: Any, path: PathArg, where: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise AnnotationError(path, where, f"expected a non-empty string for {what}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# box policy


def _canonical(raw: Sequence[float], fmt: str) -> tuple[float, float, float, float]:
    if fmt == "xyxy_norm":
        return (float(raw[0]), float(raw[1]), float(raw[2]), float(raw[3]))
    if fmt == "xyxy_px256":
        s = FLICKR_PIXEL_SPACE
        return (raw[0] / s, raw[1] / s, raw[2] / s, raw[3] / s)
    if fmt == "xywh_norm":
        x, y, w, h = (float(v) for v in raw)
        return (x, y, x + w, y + h)
    raise ValueError(f"unknown box source format {fmt!r}")


_EXPECT = {
    "xyxy_norm": "normalised x1,y1,x2,y2 within [0, 1] with x1 < x2 and y1 < y2",
    "xyxy_px256": "x1,y1,x2,y2 within the 256-pixel space with x1 < x2 and y1 < y2",
    "xywh_norm": "normalised x,y,w,h with w, h > 0 and x + w, y + h within [0, 1]",
}


class _BoxChecker:
    """Applies a BoxPolicy box by box and collects the report."""

    def __init__(self, path: PathArg | None, policy: BoxPolicy | str) -> None:
        self.path = None if path is None else str(path)
        self.policy = BoxPolicy.coerce(policy)
        self.issues: list[BoxIssue] = []
        self.n_boxes = 0

    def box(
        self,
        raw: tuple[float, ...],
        fmt: str,
        *,
        entry: int,
        sample_id: str,
        box_index: int,
        category: int | None = None,
    ) -> Box | None:
        self.n_boxes += 1
        c = _canonical(raw, fmt)
        bad = sum(
            1 for v in c if not (math.isfinite(v) and -_BOUND_TOL <= v <= 1.0 + _BOUND_TOL)
        )
        degenerate = not (c[2] > c[0] and c[3] > c[1])
        corrupt = bad > 0
        if not corrupt and not degenerate:
            return Box(*c, source=tuple(raw), source_format=fmt, category=category)
        if self.policy is BoxPolicy.ERROR:
            kind = " and ".join(k for k, f in (("corrupt", corrupt), ("degenerate", degenerate)) if f)
            raise AnnotationError(
                self.path,
                f"entry {entry} ({sample_id!r}), box {box_index}",
                f"{kind} box {list(raw)}: expected {_EXPECT[fmt]} (box policy 'error'; "
                "use 'clip' or 'drop' to load the file anyway)",
            )
        if self.policy is BoxPolicy.DROP:
            action = "dropped"
            result = None
        else:
            clipped = tuple(_clip01(v) for v in c)
            action = "clipped" if corrupt else "kept"
            result = Box(*clipped, source=tuple(raw), source_format=fmt, category=category)
        self.issues.append(
            BoxIssue(
                entry=entry,
                sample_id=sample_id,
                box_index=box_index,
                source=tuple(raw),
                corrupt=corrupt,
                degenerate=degenerate,
                n_bad_coordinates=bad,
                action=action,
            )
        )
        return result

    def report(self, n_entries: int, dropped_entries: Sequence[str] = ()) -> BoxReport:
        return BoxReport(
            path=self.path,
            policy=self.policy,
            n_entries=n_entries,
            n_boxes=self.n_boxes,
            issues=tuple(self.issues),
            dropped_entries=tuple(dropped_entries),
        )


def _clip01(v: float) -> float:
    if math.isnan(v):
        return 0.0
    return min(max(v, 0.0), 1.0)


# --------------------------------------------------------------------------------------------
# Flickr-SoundNet


@dataclass(frozen=True)
class FlickrAnnotation:
    """Boxes of one Flickr-SoundNet test image, grouped by annotator (file order)."""

    sample_id: str
    annotators: tuple[tuple[Box, ...], ...]
    path: str | None = None

    @property
    def boxes(self) -> tuple[Box, ...]:
        return tuple(b for boxes in self.annotators for b in boxes)


@dataclass(frozen=True)
class FlickrAnnotations:
    """All Flickr test images, with one merged box report."""

    entries: tuple[FlickrAnnotation, ...]
    report: BoxReport

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[FlickrAnnotation]:
        return iter(self.entries)

    def __getitem__(self, i: int) -> FlickrAnnotation:
        return self.entries[i]


def _parse_flickr_xml(
    path: PathArg, checker: _BoxChecker, entry: int, sample_id: str | None
) -> FlickrAnnotation:
    text = _read_text(path)
    sid = sample_id if sample_id is not None else Path(path).stem
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        line, col = exc.position
        raise AnnotationError(path, f"line {line} column {col + 1}", f"invalid XML: {exc}") from None
    annotators: list[tuple[Box, ...]] = []
    n_bbox = 0
    for a_index, annotator in enumerate(root):
        boxes: list[Box] = []
        for child in annotator:
            # Only <bbox> grandchildren are boxes. (EZ-VSL appends an empty box for any other
            # grandchild, which crashes the unpacking; here they are ignored.)
            if child.tag != "bbox":
                continue
            where = f"annotator element {a_index} <{annotator.tag}>, <bbox> {n_bbox}"
            fields = list(child)
            if len(fields) < 5:
                raise AnnotationError(
                    path,
                    where,
                    f"expected <bbox> with at least 5 children (1 skipped, then xmin, ymin, "
                    f"xmax, ymax), got {len(fields)}",
                )
            values = []
            for f in fields[1:5]:
                txt = (f.text or "").strip()
                try:
                    values.append(int(txt) if re.fullmatch(r"[+-]?\d+", txt) else float(txt))
                except ValueError:
                    raise AnnotationError(
                        path, f"{where} <{f.tag}>", f"expected a number, got {txt!r}"
                    ) from None
            box = checker.box(
                tuple(values), "xyxy_px256", entry=entry, sample_id=sid, box_index=n_bbox
            )
            n_bbox += 1
            if box is not None:
                boxes.append(box)
        if boxes:
            annotators.append(tuple(boxes))
    if n_bbox == 0:
        raise AnnotationError(
            path,
            f"root <{root.tag}>",
            "no box found: expected root → annotator elements → <bbox> elements",
        )
    return FlickrAnnotation(sample_id=sid, annotators=tuple(annotators), path=str(path))


def parse_flickr_xml(path: PathArg, *, policy: BoxPolicy | str = BoxPolicy.CLIP) -> FlickrAnnotation:
    """Parse one Flickr-SoundNet annotation XML.

    Layout (as EZ-VSL reads it): root → one element per annotator → ``<bbox>`` elements whose
    first child is skipped and whose next four children are xmin, ymin, xmax, ymax in a
    256×256 pixel space. Other grandchildren are ignored. The sample id is the file stem.
    Under ``policy="drop"`` an annotator whose boxes were all dropped disappears.
    """
    checker = _BoxChecker(path, policy)
    return _parse_flickr_xml(path, checker, 0, None)


def read_flickr_annotations(
    ids: Sequence[str],
    annotations_dir: PathArg,
    *,
    policy: BoxPolicy | str = BoxPolicy.CLIP,
) -> FlickrAnnotations:
    """Parse ``<annotations_dir>/<id>.xml`` for every id (in order) into one collection.

    Under ``policy="drop"``, images left without any box are removed and listed in the report.
    """
    checker = _BoxChecker(annotations_dir, policy)
    entries: list[FlickrAnnotation] = []
    dropped: list[str] = []
    for i, sid in enumerate(ids):
        xml_path = Path(annotations_dir) / f"{sid}.xml"
        checker.path = str(xml_path)  # errors name the XML file itself
        ann = _parse_flickr_xml(xml_path, checker, i, sid)
        if ann.annotators:
            entries.append(ann)
        else:
            dropped.append(sid)
    checker.path = str(annotations_dir)
    return FlickrAnnotations(tuple(entries), checker.report(len(ids), dropped))


def read_flickr_test_csv(path: PathArg) -> tuple[str, ...]:
    """Ids of EZ-VSL's ``flickr_test.csv`` (rows ``id,int``; the 2nd column is unused)."""
    ids = []
    for line, row in _csv_rows(path):
        if len(row) != 2:
            raise AnnotationError(
                path, f"line {line}", f"expected 2 comma-separated columns (id,int), got {len(row)}"
            )
        ids.append(_string(row[0], path, f"line {line}", "the id"))
    return _unique(ids, path)


def read_id_list(path: PathArg) -> tuple[str, ...]:
    """One id per line (``vggss_test.csv``, ``vggss_(un)heard_test.csv``, ``music_duet_test.csv``,
    ``flickr_10k.txt``…); CRLF or LF, with or without a final newline; blank lines skipped."""
    ids = []
    for line, row in _csv_rows(path):
        if len(row) != 1:
            raise AnnotationError(
                path, f"line {line}", f"expected 1 column (an id), got {len(row)}: {','.join(row)!r}"
            )
        ids.append(row[0])
    return _unique(ids, path)


def _unique(ids: list[str], path: PathArg) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    for i, sid in enumerate(ids):
        if sid in seen:
            raise AnnotationError(path, f"row {i + 1}", f"duplicate id {sid!r} (first at row {seen[sid] + 1})")
        seen[sid] = i
    return tuple(ids)


# --------------------------------------------------------------------------------------------
# VGG-SS


@dataclass(frozen=True)
class VggssEntry:
    """One VGG-SS test image: ``index`` is its position in the JSON list."""

    index: int
    sample_id: str
    class_name: str
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class VggssAnnotations:
    """Parsed ``vggss.json``: entries (file order) and the box report."""

    path: str | None
    entries: tuple[VggssEntry, ...]
    report: BoxReport

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[VggssEntry]:
        return iter(self.entries)

    def __getitem__(self, i: int) -> VggssEntry:
        return self.entries[i]

    @property
    def by_id(self) -> dict[str, VggssEntry]:
        return {e.sample_id: e for e in self.entries}

    @property
    def classes(self) -> tuple[str, ...]:
        """Sorted unique class names (as written in the JSON)."""
        return tuple(sorted({e.class_name for e in self.entries}))

    def box_count_histogram(self) -> dict[int, int]:
        """{number of boxes: number of images}."""
        return dict(sorted(Counter(len(e.boxes) for e in self.entries).items()))


def parse_vggss_json(path: PathArg, *, policy: BoxPolicy | str = BoxPolicy.CLIP) -> VggssAnnotations:
    """Parse EZ-VSL's ``vggss.json``: a list of ``{"file", "class", "bbox": [[x1,y1,x2,y2], …]}``
    with normalised coordinates (ints and floats mixed).

    The file has 14 corrupt negative coordinates (−2.8823037615171176e16) in 12 boxes and 18
    degenerate boxes (12 of them the corrupt ones). ``policy`` decides what happens to them;
    the returned report lists them all.
    """
    data = _load_json(path)
    if not isinstance(data, list):
        raise AnnotationError(path, "top level", f"expected a JSON list of entries, got {type(data).__name__}")
    checker = _BoxChecker(path, policy)
    layout = '{"file": id, "class": name, "bbox": [[x1, y1, x2, y2], ...]}'
    entries: list[VggssEntry] = []
    dropped: list[str] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(data):
        where = f"entry {i}"
        _require(item, ("file", "class", "bbox"), path, where, layout)
        sid = _string(item["file"], path, where, "'file'")
        where = f"entry {i} ({sid!r})"
        if sid in seen:
            raise AnnotationError(path, where, f"duplicate id (first at entry {seen[sid]})")
        seen[sid] = i
        cls = _string(item["class"], path, where, "'class'")
        raw_boxes = item["bbox"]
        if not isinstance(raw_boxes, list) or not raw_boxes:
            raise AnnotationError(path, where, f"expected 'bbox' as a non-empty list of boxes, got {raw_boxes!r}")
        boxes = []
        for j, rb in enumerate(raw_boxes):
            raw = _four_numbers(rb, path, f"{where}, box {j}", "x1,y1,x2,y2")
            box = checker.box(raw, "xyxy_norm", entry=i, sample_id=sid, box_index=j)
            if box is not None:
                boxes.append(box)
        if boxes:
            entries.append(VggssEntry(i, sid, cls, tuple(boxes)))
        else:
            dropped.append(sid)
    return VggssAnnotations(str(path), tuple(entries), checker.report(len(data), dropped))


# --------------------------------------------------------------------------------------------
# id,class pairings (VGGSound single/duet/trio/mixed, VGGSound-Instruments, MUSIC solo test csv)


@dataclass(frozen=True)
class PairingRow:
    """One row of an ``id,class[,id,class…]`` csv: the sources of one (mixture) sample."""

    line: int
    ids: tuple[str, ...]
    classes: tuple[str, ...]

    @property
    def k(self) -> int:
        return len(self.ids)

    @property
    def sample_id(self) -> str:
        """The sources' ids joined with ``+`` (NoPrior's convention)."""
        return "+".join(self.ids)


def read_pairing_csv(path: PathArg, k: int | None = None) -> tuple[PairingRow, ...]:
    """Read rows of k ``id,class`` column pairs.

    ``k=1``: ``vggsound_single_test.csv``, ``vgginstruments_test.csv``, ``music_solo_test.csv``;
    ``k=2``: ``vggsound_duet_test.csv``, ``vgginstruments_multi_test.csv``; ``k=3``: trio.
    ``k=None`` ("mixed"): every row may have its own number of pairs (an even number of
    columns, at least 2). Ids and classes must be non-empty.
    """
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 or None, got {k}")
    rows = []
    for line, row in _csv_rows(path):
        where = f"line {line}"
        if k is not None and len(row) != 2 * k:
            cols = ",".join(["id,class"] * k)
            raise AnnotationError(
                path, where, f"expected {2 * k} comma-separated columns ({cols}), got {len(row)}"
            )
        if k is None and (len(row) < 2 or len(row) % 2):
            raise AnnotationError(
                path, where, f"expected an even number of columns (id,class pairs), got {len(row)}"
            )
        for c, f in enumerate(row):
            if not f:
                what = "id" if c % 2 == 0 else "class"
                raise AnnotationError(path, where, f"empty {what} in column {c + 1}")
        rows.append(PairingRow(line, tuple(row[0::2]), tuple(row[1::2])))
    return tuple(rows)


# --------------------------------------------------------------------------------------------
# MUSIC, AVGN layout


@dataclass(frozen=True)
class MusicEntry:
    """One annotated MUSIC frame (AVGN layout): one class and one box per source."""

    index: int
    sample_id: str
    classes: tuple[str, ...]
    boxes: tuple[Box, ...]

    @property
    def video_id(self) -> str:
        """The video whose whole-file wav AVGN uses (``id[:-10]``)."""
        return music_video_id(self.sample_id)


@dataclass(frozen=True)
class MusicAnnotations:
    path: str | None
    n_sources: int
    entries: tuple[MusicEntry, ...]
    report: BoxReport

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[MusicEntry]:
        return iter(self.entries)

    def __getitem__(self, i: int) -> MusicEntry:
        return self.entries[i]


def _music_layout(item: Any) -> int:
    if isinstance(item, dict):
        if "bbox" in item:
            return 1
        n = 0
        while f"bbox_src{n + 1}" in item:
            n += 1
        return n
    return 0


def parse_avgn_music_json(
    path: PathArg,
    *,
    policy: BoxPolicy | str = BoxPolicy.CLIP,
    n_sources: int | None = None,
) -> MusicAnnotations:
    """Parse AVGN's ``music_solo.json`` (``{"file", "class", "bbox"}``) or ``music_duet.json``
    (``{"file", "class_src1", "bbox_src1", "class_src2", "bbox_src2"}``).

    Boxes are **normalised x, y, w, h** (every box satisfies x + w ≤ 1, y + h ≤ 1); AVGN's own
    loader misreads them as x1, y1, x2, y2 (:func:`~training.data.boxes.avgn_misread_mask`).
    The layout is taken from the first entry unless ``n_sources`` is given; all entries must
    share it. Ids must be MUSIC frame ids ``YTID_ccc_fffff``. Under ``policy="drop"`` an entry
    loses all its sources when any of its boxes is dropped (the sources are a set).
    """
    data = _load_json(path)
    if not isinstance(data, list):
        raise AnnotationError(path, "top level", f"expected a JSON list of entries, got {type(data).__name__}")
    if n_sources is None:
        n_sources = _music_layout(data[0]) if data else 1
        if n_sources == 0:
            raise AnnotationError(
                path, "entry 0", "expected keys 'file','class','bbox' (solo) or "
                "'file','class_src1','bbox_src1',... (duet)"
            )
    if n_sources == 1:
        keys: tuple[tuple[str, str], ...] = (("class", "bbox"),)
    else:
        keys = tuple((f"class_src{s}", f"bbox_src{s}") for s in range(1, n_sources + 1))
    layout = "{" + ", ".join(['"file"'] + [f'"{c}", "{b}": [x, y, w, h]' for c, b in keys]) + "}"
    checker = _BoxChecker(path, policy)
    entries: list[MusicEntry] = []
    dropped: list[str] = []
    for i, item in enumerate(data):
        where = f"entry {i}"
        _require(item, ("file",) + tuple(k for pair in keys for k in pair), path, where, layout)
        sid = _string(item["file"], path, where, "'file'")
        where = f"entry {i} ({sid!r})"
        if _MUSIC_ID.match(sid) is None:
            raise AnnotationError(path, where, "expected 'file' to be a MUSIC frame id 'YTID_ccc_fffff'")
        classes, boxes = [], []
        keep = True
        for s, (ck, bk) in enumerate(keys):
            classes.append(_string(item[ck], path, where, repr(ck)))
            raw = _four_numbers(item[bk], path, f"{where}, {bk!r}", "x,y,w,h")
            box = checker.box(raw, "xywh_norm", entry=i, sample_id=sid, box_index=s)
            if box is None:
                keep = False
            else:
                boxes.append(box)
        if keep:
            entries.append(MusicEntry(i, sid, tuple(classes), tuple(boxes)))
        else:
            dropped.append(sid)
    return MusicAnnotations(str(path), n_sources, tuple(entries), checker.report(len(data), dropped))


def parse_avgn_music_solo(path: PathArg, *, policy: BoxPolicy | str = BoxPolicy.CLIP) -> MusicAnnotations:
    """:func:`parse_avgn_music_json` requiring the solo layout."""
    return parse_avgn_music_json(path, policy=policy, n_sources=1)


def parse_avgn_music_duet(path: PathArg, *, policy: BoxPolicy | str = BoxPolicy.CLIP) -> MusicAnnotations:
    """:func:`parse_avgn_music_json` requiring the duet layout."""
    return parse_avgn_music_json(path, policy=policy, n_sources=2)


# --------------------------------------------------------------------------------------------
# DSOL


@dataclass(frozen=True)
class DsolFrame:
    """One DSOL MUSIC test frame ``<video>/frame_SSS/FFFFF.jpg``.

    ``boxes`` (canonical, from ``normbox``) carry ``category`` = the file's ``category_id``;
    ``pixel_boxes`` are the file's ``box`` values (pixel x, y, w, h) in the same order;
    ``width`` comes from the misspelt key ``wdith``. Frames may have no box.
    """

    index: int
    key: str
    video_id: str
    second: int
    frame_index: int
    boxes: tuple[Box, ...]
    pixel_boxes: tuple[tuple[float, float, float, float], ...]
    width: float
    height: float

    @property
    def categories(self) -> tuple[int, ...]:
        """Distinct category ids in order of first appearance."""
        return tuple(dict.fromkeys(b.category for b in self.boxes if b.category is not None))


@dataclass(frozen=True)
class DsolAnnotations:
    path: str | None
    entries: tuple[DsolFrame, ...]
    report: BoxReport

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[DsolFrame]:
        return iter(self.entries)

    def __getitem__(self, i: int) -> DsolFrame:
        return self.entries[i]

    def box_count_histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(len(e.boxes) for e in self.entries).items()))


def _int_value(value: Any, path: PathArg, where: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AnnotationError(path, where, f"expected an integer {what}, got {value!r}")
    return value


def parse_dsol_music_json(path: PathArg, *, policy: BoxPolicy | str = BoxPolicy.CLIP) -> DsolAnnotations:
    """Parse DSOL's ``solotest.json`` / ``duettest.json``.

    Layout: ``{"<video>/frame_SSS/FFFFF.jpg": {"bbox": [{"box": [x, y, w, h] px,
    "normbox": [x, y, w, h] normalised, "category_id": int}, …], "wdith": W, "height": H}}``
    (the key typo ``wdith`` is the file's; ``width`` is accepted too). Entries keep file order.
    Under ``policy="drop"`` a dropped box is removed from its frame (frames may legitimately
    have no box, so frames are never dropped).
    """
    data = _load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(path, "top level", f"expected a JSON object keyed by frame path, got {type(data).__name__}")
    checker = _BoxChecker(path, policy)
    layout = '{"bbox": [{"box", "normbox", "category_id"}, ...], "wdith", "height"}'
    entries = []
    for i, (key, value) in enumerate(data.items()):
        where = f"entry {i} ({key!r})"
        m = _DSOL_KEY.match(key)
        if m is None:
            raise AnnotationError(path, where, "expected a key '<video>/frame_SSS/FFFFF.jpg'")
        _require(value, ("bbox", "height"), path, where, layout)
        wkey = "wdith" if "wdith" in value else "width"
        if wkey not in value:
            raise AnnotationError(path, where, f"missing key 'wdith' (or 'width'); expected {layout}")
        width = _number(value[wkey], path, where, repr(wkey))
        height = _number(value["height"], path, where, "'height'")
        if not isinstance(value["bbox"], list):
            raise AnnotationError(path, where, f"expected 'bbox' as a list, got {value['bbox']!r}")
        boxes, pixel = [], []
        for j, item in enumerate(value["bbox"]):
            bwhere = f"{where}, box {j}"
            _require(item, ("box", "normbox", "category_id"), path, bwhere, '{"box", "normbox", "category_id"}')
            norm = _four_numbers(item["normbox"], path, bwhere, "'normbox' x,y,w,h")
            px = _four_numbers(item["box"], path, bwhere, "'box' x,y,w,h")
            cat = _int_value(item["category_id"], path, bwhere, "'category_id'")
            box = checker.box(norm, "xywh_norm", entry=i, sample_id=key, box_index=j, category=cat)
            if box is not None:
                boxes.append(box)
                pixel.append(px)
        entries.append(
            DsolFrame(
                index=i,
                key=key,
                video_id=m.group("video"),
                second=int(m.group("second")),
                frame_index=int(m.group("frame")),
                boxes=tuple(boxes),
                pixel_boxes=tuple(pixel),
                width=width,
                height=height,
            )
        )
    return DsolAnnotations(str(path), tuple(entries), checker.report(len(data)))


@dataclass(frozen=True)
class DsolAudiosetEntry:
    """One AudioSet-instrument frame ``<YTID>/<second>``; ``Box.category`` is 0..12."""

    index: int
    key: str
    video_id: str
    second: int
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class DsolAudiosetAnnotations:
    path: str | None
    entries: tuple[DsolAudiosetEntry, ...]
    report: BoxReport

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[DsolAudiosetEntry]:
        return iter(self.entries)

    def __getitem__(self, i: int) -> DsolAudiosetEntry:
        return self.entries[i]


def parse_dsol_audioset_json(
    path: PathArg,
    *,
    policy: BoxPolicy | str = BoxPolicy.CLIP,
    n_categories: int = 13,
) -> DsolAudiosetAnnotations:
    """Parse DSOL's ``audioset_box.json``: ``{"<YTID>/<sec>": {"bbox": [{"category": 0..12,
    "normbox": [x, y, w, h]}, …]}}`` (0 to 16 boxes per frame)."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(path, "top level", f"expected a JSON object keyed by '<YTID>/<sec>', got {type(data).__name__}")
    checker = _BoxChecker(path, policy)
    entries = []
    for i, (key, value) in enumerate(data.items()):
        where = f"entry {i} ({key!r})"
        m = _AUDIOSET_KEY.match(key)
        if m is None:
            raise AnnotationError(path, where, "expected a key '<YTID>/<second>'")
        _require(value, ("bbox",), path, where, '{"bbox": [{"category", "normbox"}, ...]}')
        if not isinstance(value["bbox"], list):
            raise AnnotationError(path, where, f"expected 'bbox' as a list, got {value['bbox']!r}")
        boxes = []
        for j, item in enumerate(value["bbox"]):
            bwhere = f"{where}, box {j}"
            _require(item, ("category", "normbox"), path, bwhere, '{"category", "normbox"}')
            cat = _int_value(item["category"], path, bwhere, "'category'")
            if not 0 <= cat < n_categories:
                raise AnnotationError(path, bwhere, f"expected 'category' in 0..{n_categories - 1}, got {cat}")
            norm = _four_numbers(item["normbox"], path, bwhere, "'normbox' x,y,w,h")
            box = checker.box(norm, "xywh_norm", entry=i, sample_id=key, box_index=j, category=cat)
            if box is not None:
                boxes.append(box)
        entries.append(DsolAudiosetEntry(i, key, m.group("video"), int(m.group("second")), tuple(boxes)))
    return DsolAudiosetAnnotations(str(path), tuple(entries), checker.report(len(data)))
