"""torch Datasets over the official test layouts.

Every dataset reads media from ``root`` laid out as the official projects expect (override with
``frames_dir`` / ``audio_dir``, absolute or relative to ``root``):

======================================  =========================================================
dataset                                 layout
======================================  =========================================================
:class:`FlickrSoundNetDataset`          ``frames/<id>.jpg``, ``audio/<id>.wav``,
                                        ``Annotations/<id>.xml``
:class:`VggssDataset`                   ``frames/<id>.jpg``, ``audio/<id>.wav`` + ``vggss.json``
:class:`VggsoundMixtureDataset`         same files, rows of a pairing csv (k sources each)
:class:`MusicAvgnDataset`               ``frames/<YTID_ccc_fffff>.jpg``, ``audio/<YTID>.wav``
                                        (the whole-video wav, as AVGN)
:class:`MusicDsolDataset`               ``frames/<YTID_0_1000>/frame_SSS/FFFFF.jpg``,
                                        ``audio/<YTID_0_1000>.flac`` (or ``.wav``)
======================================  =========================================================

Each item is a dict of numpy arrays and plain values (``torch.utils.data.default_collate`` turns
the arrays into tensors; :func:`collate_samples` also copes with per-item source counts):

* ``"id"`` (str) and ``"source_ids"`` (tuple of str, one per source);
* ``"audio"``: float32 (L,) raw waveform at ``"sample_rate"`` (int) — the mixture for multi-source
  samples (no spectrogram: the model's front-end computes it);
* ``"frame"``: uint8 RGB (H, W, 3) — or ``"frames"`` (k, H, W, 3) for pairing datasets;
* ``"masks"``: float32 (S, mask_size, mask_size), one GT mask per source (Flickr: the consensus
  map in {0, 0.5, 1}; otherwise {0, 1});
* ``"class_ids"``: int64 (S,) (−1 where there is no class) and ``"class_names"`` (tuple of str).

A missing frame or audio file raises ``FileNotFoundError`` naming the path and the sample; an
undecodable one :class:`~training.data.errors.MediaError`. No item is ever replaced by another.
"""

from __future__ import annotations

import errno
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data.annotations import (
    DSOL_MUSIC_CATEGORIES,
    MUSIC_CLASSES,
    DsolAnnotations,
    FlickrAnnotations,
    MusicAnnotations,
    PairingRow,
    VggssAnnotations,
    parse_avgn_music_json,
    parse_dsol_music_json,
    parse_vggss_json,
    read_flickr_annotations,
    read_flickr_test_csv,
    read_pairing_csv,
    vggsound_class_key,
)
from training.data.audio import WINDOW_PROTOCOLS, load_audio_window, load_frame
from training.data.boxes import (
    BoxPolicy,
    BoxReport,
    avgn_misread_mask,
    box_mask,
    flickr_consensus_mask,
    union_mask,
)
from training.data.errors import MediaError
from training.data.mixtures import mix_rms_average, mix_waveform_sum

__all__ = [
    "MIXTURES",
    "ClassVocabulary",
    "FlickrSoundNetDataset",
    "VggssDataset",
    "VggsoundMixtureDataset",
    "MusicAvgnDataset",
    "MusicDsolDataset",
    "collate_samples",
]

PathArg = str | PathLike[str]

#: Waveform mixtures a pairing dataset can return as ``"audio"``; ``"none"`` returns only the
#: per-source ``"source_audio"`` (e.g. for NoPrior's spectrogram averaging).
MIXTURES: Mapping[str, Callable[[Sequence[np.ndarray]], np.ndarray] | None] = {
    "sum": mix_waveform_sum,
    "rms_average": mix_rms_average,
    "none": None,
}


def _identity(name: str) -> str:
    return name


class ClassVocabulary:
    """Class name → id (position in ``classes``), matched through ``key`` (default identity).

    ``key`` must be a module-level function so that datasets stay picklable (DataLoader workers).
    """

    def __init__(self, classes: Iterable[str], key: Callable[[str], str] | None = None) -> None:
        self.classes = tuple(classes)
        self._key = key or _identity
        self._ids: dict[str, int] = {}
        for i, c in enumerate(self.classes):
            k = self._key(c)
            if k in self._ids:
                raise ValueError(f"class vocabulary has {c!r} twice (as {k!r})")
            self._ids[k] = i

    def __len__(self) -> int:
        return len(self.classes)

    def id(self, name: str, context: str = "") -> int:
        try:
            return self._ids[self._key(name)]
        except KeyError:
            where = f" ({context})" if context else ""
            raise ValueError(
                f"class {name!r}{where} is not in the vocabulary of {len(self.classes)} classes"
            ) from None


def _class_names_key(classes: Sequence[str] | None, names: Iterable[str], key) -> ClassVocabulary:
    if classes is None:
        classes = sorted({key(n) for n in names})
    return ClassVocabulary(classes, key)


class _MediaDataset(Dataset):
    """Shared media plumbing (paths, window, resampling, frames)."""

    def __init__(
        self,
        root: PathArg,
        *,
        frames_dir: PathArg | None = None,
        audio_dir: PathArg | None = None,
        sample_rate: int | None = None,
        window: str = "ezvsl",
        duration: float = 3.0,
        frame_size: int | None = None,
        mask_size: int = 224,
        audio_ext: str = ".wav",
    ) -> None:
        if window not in WINDOW_PROTOCOLS:
            raise ValueError(f"unknown window protocol {window!r}; use one of {WINDOW_PROTOCOLS}")
        self.root = Path(root)
        self.frames_dir = self.root / (frames_dir if frames_dir is not None else "frames")
        self.audio_dir = self.root / (audio_dir if audio_dir is not None else "audio")
        self.sample_rate = sample_rate
        self.window = window
        self.duration = float(duration)
        self.frame_size = frame_size
        self.mask_size = int(mask_size)
        self.audio_ext = audio_ext if audio_ext.startswith(".") else "." + audio_ext

    def _load_audio(self, path: Path, sid: str, start_s: float | None = None) -> tuple[np.ndarray, int]:
        return load_audio_window(
            path,
            protocol=self.window,
            duration=self.duration,
            sample_rate=self.sample_rate,
            start_s=start_s,
            what=f"audio of sample {sid!r}",
        )

    def _load_frame(self, path: Path, sid: str) -> np.ndarray:
        return load_frame(path, self.frame_size, what=f"frame of sample {sid!r}")

    def frame_path(self, sample_id: str) -> Path:
        return self.frames_dir / f"{sample_id}.jpg"

    def audio_path(self, sample_id: str) -> Path:
        return self.audio_dir / f"{sample_id}{self.audio_ext}"


def _sample(
    sid: str,
    source_ids: Sequence[str],
    audio: np.ndarray,
    sr: int,
    masks: np.ndarray | None,
    class_ids: Sequence[int],
    class_names: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": sid,
        "source_ids": tuple(source_ids),
        "audio": audio,
        "sample_rate": sr,
    }
    out.update(extra)
    if masks is not None:
        out["masks"] = masks
    out["class_ids"] = np.asarray(class_ids, np.int64)
    out["class_names"] = tuple(class_names)
    return out


# --------------------------------------------------------------------------------------------


class FlickrSoundNetDataset(_MediaDataset):
    """Flickr-SoundNet test set (EZ-VSL layout), one consensus GT mask per image.

    ``ids`` or ``test_csv`` (EZ-VSL's ``flickr_test.csv``) choose the images; the XML of every
    image is parsed up front (``annotations_dir``, default ``root/Annotations``), so a bad file
    fails at construction. ``policy`` handles corrupt/degenerate boxes; :attr:`report` lists them.
    """

    def __init__(
        self,
        root: PathArg,
        *,
        ids: Sequence[str] | None = None,
        test_csv: PathArg | None = None,
        annotations_dir: PathArg | None = None,
        policy: BoxPolicy | str = BoxPolicy.CLIP,
        **media: Any,
    ) -> None:
        super().__init__(root, **media)
        if (ids is None) == (test_csv is None):
            raise ValueError("give exactly one of ids= or test_csv=")
        ids = read_flickr_test_csv(test_csv) if test_csv is not None else tuple(ids)
        self.annotations_dir = self.root / (annotations_dir if annotations_dir is not None else "Annotations")
        self.annotations: FlickrAnnotations = read_flickr_annotations(
            ids, self.annotations_dir, policy=policy
        )

    @property
    def report(self) -> BoxReport:
        return self.annotations.report

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ann = self.annotations[index]
        sid = ann.sample_id
        frame = self._load_frame(self.frame_path(sid), sid)
        audio, sr = self._load_audio(self.audio_path(sid), sid)
        mask = flickr_consensus_mask(ann.annotators, self.mask_size)[None]
        return _sample(sid, (sid,), audio, sr, mask, (-1,), ("",), frame=frame)


class VggssDataset(_MediaDataset):
    """VGG-SS test set: frame, centred 3-s audio, union-of-boxes mask, class id.

    ``annotations``: path to ``vggss.json`` or parsed :class:`VggssAnnotations`. ``ids``: an
    optional subset in its own order (e.g. ``vggss_heard_test.csv`` via
    :func:`~training.data.annotations.read_id_list`); ids removed by ``policy="drop"`` are skipped
    (they are in ``report.dropped_entries``), any other unknown id is an error. Classes map to ids
    through ``classes`` (default: the sorted classes of the JSON), compared with
    :func:`~training.data.annotations.vggsound_class_key` so that "dog bow-wow" and
    "dog_bow-wow" match.
    """

    def __init__(
        self,
        root: PathArg,
        annotations: PathArg | VggssAnnotations,
        *,
        ids: Sequence[str] | None = None,
        policy: BoxPolicy | str = BoxPolicy.CLIP,
        classes: Sequence[str] | None = None,
        **media: Any,
    ) -> None:
        super().__init__(root, **media)
        if not isinstance(annotations, VggssAnnotations):
            annotations = parse_vggss_json(annotations, policy=policy)
        self.annotations = annotations
        if ids is None:
            self.entries = annotations.entries
        else:
            by_id = annotations.by_id
            dropped = set(annotations.report.dropped_entries)
            missing = [i for i in ids if i not in by_id and i not in dropped]
            if missing:
                raise ValueError(
                    f"{len(missing)} ids are not in {annotations.path}: {missing[:5]}"
                )
            self.entries = tuple(by_id[i] for i in ids if i in by_id)
        self.vocabulary = _class_names_key(
            classes, (e.class_name for e in annotations.entries), vggsound_class_key
        )

    @property
    def report(self) -> BoxReport:
        return self.annotations.report

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        sid = e.sample_id
        frame = self._load_frame(self.frame_path(sid), sid)
        audio, sr = self._load_audio(self.audio_path(sid), sid)
        mask = union_mask(e.boxes, self.mask_size)[None]
        cid = self.vocabulary.id(e.class_name, f"sample {sid!r}")
        return _sample(sid, (sid,), audio, sr, mask, (cid,), (e.class_name,), frame=frame)


class VggsoundMixtureDataset(_MediaDataset):
    """Rows of an ``id,class`` × k pairing csv: VGGSound single/duet/trio/mixed and
    VGGSound-Instruments (single and multi).

    Each source contributes its frame and its audio window (the window protocol applies to each
    file); ``"audio"`` is the ``mixture`` of the k windows (``"sum"``: AVGN, ``"rms_average"``:
    Mix-and-Localize, ``"none"``: no ``"audio"`` key) and ``"source_audio"`` (k, L) holds the
    unmixed windows. ``"frames"`` is (k, H, W, 3): frames of different sizes need
    ``frame_size``.

    GT masks (one per source): from ``boxes`` (``vggss.json`` path or parsed, for VGGSound; every
    source id must have an entry — rows with a source removed by ``policy="drop"`` are left out
    and listed in :attr:`dropped_rows`) or from ``masks_dir`` (VGGSound-Instruments:
    ``<id>.npy`` or ``<id>.png``, any non-zero pixel is foreground, resized nearest-neighbour
    to ``mask_size``); without either, no ``"masks"``.
    """

    def __init__(
        self,
        root: PathArg,
        pairing: PathArg | Sequence[PairingRow],
        *,
        k: int | None = None,
        mixture: str = "sum",
        boxes: PathArg | VggssAnnotations | None = None,
        masks_dir: PathArg | None = None,
        policy: BoxPolicy | str = BoxPolicy.CLIP,
        classes: Sequence[str] | None = None,
        **media: Any,
    ) -> None:
        super().__init__(root, **media)
        if mixture not in MIXTURES:
            raise ValueError(f"unknown mixture {mixture!r}; use one of {tuple(MIXTURES)}")
        if boxes is not None and masks_dir is not None:
            raise ValueError("give boxes= or masks_dir=, not both")
        if isinstance(pairing, (str, PathLike)):
            pairing = read_pairing_csv(pairing, k)
        rows: tuple[PairingRow, ...] = tuple(pairing)
        self.mixture = mixture
        if boxes is not None and not isinstance(boxes, VggssAnnotations):
            boxes = parse_vggss_json(boxes, policy=policy)
        self.boxes = boxes
        self._boxes_by_id = boxes.by_id if boxes is not None else None
        #: Rows left out because a source's entry was removed by ``policy="drop"``.
        self.dropped_rows: tuple[PairingRow, ...] = ()
        if boxes is not None:
            dropped = set(boxes.report.dropped_entries)
            known = self._boxes_by_id
            missing = sorted({i for r in rows for i in r.ids if i not in known and i not in dropped})
            if missing:
                raise ValueError(
                    f"{len(missing)} source ids have no entry in {boxes.path}: {missing[:5]}"
                )
            self.dropped_rows = tuple(r for r in rows if dropped.intersection(r.ids))
            rows = tuple(r for r in rows if not dropped.intersection(r.ids))
        self.rows = rows
        self.masks_dir = None if masks_dir is None else self.root / masks_dir
        self.vocabulary = _class_names_key(
            classes, (c for r in self.rows for c in r.classes), vggsound_class_key
        )

    def __len__(self) -> int:
        return len(self.rows)

    def _mask(self, source_id: str, sid: str) -> np.ndarray:
        if self._boxes_by_id is not None:
            return union_mask(self._boxes_by_id[source_id].boxes, self.mask_size)
        return _load_mask_file(self.masks_dir, source_id, sid, self.mask_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        sid = row.sample_id
        frames, waves, rates = [], [], []
        for source_id in row.ids:
            frames.append(self._load_frame(self.frame_path(source_id), sid))
            wave, sr = self._load_audio(self.audio_path(source_id), sid)
            waves.append(wave)
            rates.append(sr)
        if len(set(rates)) != 1:
            raise ValueError(
                f"sample {sid!r}: sources have different sample rates {rates}; pass sample_rate="
            )
        if len({f.shape for f in frames}) != 1:
            raise ValueError(
                f"sample {sid!r}: frames differ in size {[f.shape for f in frames]}; pass frame_size="
            )
        source_audio = np.stack(waves)
        mix = MIXTURES[self.mixture]
        masks = None
        if self._boxes_by_id is not None or self.masks_dir is not None:
            masks = np.stack([self._mask(s, sid) for s in row.ids])
        class_ids = [self.vocabulary.id(c, f"sample {sid!r}") for c in row.classes]
        out = _sample(
            sid, row.ids, mix(waves) if mix is not None else None, sr, masks, class_ids,
            row.classes, frames=np.stack(frames), source_audio=source_audio,
        )
        if mix is None:
            del out["audio"]
        return out


def _load_mask_file(masks_dir: Path, source_id: str, sid: str, size: int) -> np.ndarray:
    import cv2

    tried = [masks_dir / f"{source_id}{ext}" for ext in (".npy", ".png")]
    path = next((p for p in tried if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            errno.ENOENT,
            f"mask of sample {sid!r} not found: tried {', '.join(map(str, tried))}",
            str(tried[0]),
        )
    if path.suffix == ".npy":
        try:
            m = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise MediaError(path, f"cannot read mask: {exc}") from exc
    else:
        m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if m is None:
            raise MediaError(path, "OpenCV cannot decode this mask")
    m = np.asarray(m)
    if m.ndim == 3:
        m = m.max(axis=2)
    if m.ndim != 2:
        raise MediaError(path, f"expected a 2-D mask, got shape {m.shape}")
    fg = (m != 0).astype(np.uint8)
    if fg.shape != (size, size):
        fg = cv2.resize(fg, (size, size), interpolation=cv2.INTER_NEAREST)
    return fg.astype(np.float32)


class MusicAvgnDataset(_MediaDataset):
    """MUSIC solo/duet test frames in AVGN's layout (``music_solo.json`` / ``music_duet.json``).

    The audio is the **whole-video** wav ``audio/<YTID>.wav`` (``id[:-10]``) and, as in AVGN,
    the 3-s window is taken from the whole file by ``window`` (default: centred), whatever the
    frame — AVGN's audio–frame misalignment, reproduced on purpose. Duet entries carry their real
    duet audio (no re-mixing). One mask per source: ``box_protocol="xywh"`` reads the boxes
    correctly as x, y, w, h (NoPrior, DSOL); ``"avgn_misread"`` reproduces AVGN's misreading
    (mostly empty masks). Class ids index ``classes`` (default the 11 sorted MUSIC classes).
    ``ids``: optional subset/order (e.g. the ids of ``music_solo_test.csv``).
    """

    BOX_PROTOCOLS = ("xywh", "avgn_misread")

    def __init__(
        self,
        root: PathArg,
        annotations: PathArg | MusicAnnotations,
        *,
        ids: Sequence[str] | None = None,
        box_protocol: str = "xywh",
        policy: BoxPolicy | str = BoxPolicy.CLIP,
        classes: Sequence[str] = MUSIC_CLASSES,
        **media: Any,
    ) -> None:
        super().__init__(root, **media)
        if box_protocol not in self.BOX_PROTOCOLS:
            raise ValueError(f"unknown box protocol {box_protocol!r}; use one of {self.BOX_PROTOCOLS}")
        if not isinstance(annotations, MusicAnnotations):
            annotations = parse_avgn_music_json(annotations, policy=policy)
        self.annotations = annotations
        if ids is None:
            self.entries = annotations.entries
        else:
            by_id = {e.sample_id: e for e in annotations.entries}
            dropped = set(annotations.report.dropped_entries)
            missing = [i for i in ids if i not in by_id and i not in dropped]
            if missing:
                raise ValueError(f"{len(missing)} ids are not in {annotations.path}: {missing[:5]}")
            self.entries = tuple(by_id[i] for i in ids if i in by_id)
        self.box_protocol = box_protocol
        self.vocabulary = ClassVocabulary(classes)

    @property
    def report(self) -> BoxReport:
        return self.annotations.report

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        sid = e.sample_id
        frame = self._load_frame(self.frame_path(sid), sid)
        audio, sr = self._load_audio(self.audio_path(e.video_id), sid)
        if self.box_protocol == "xywh":
            masks = np.stack([box_mask(b, self.mask_size) for b in e.boxes])
        else:
            masks = np.stack([avgn_misread_mask(b, self.mask_size) for b in e.boxes])
        class_ids = [self.vocabulary.id(c, f"sample {sid!r}") for c in e.classes]
        return _sample(sid, (sid,) * len(e.boxes), audio, sr, masks, class_ids, e.classes, frame=frame)


class MusicDsolDataset(_MediaDataset):
    """MUSIC solo/duet test frames in DSOL's layout (``solotest.json`` / ``duettest.json``).

    Frames: ``frames/<key>`` with keys ``<YTID_0_1000>/frame_SSS/FFFFF.jpg``. Audio: the
    video's file ``audio/<YTID_0_1000>`` + the first existing of ``audio_exts``; the window is
    the 1-s segment of second ``SSS`` (DSOL cuts each video into consecutive non-overlapping
    1-s segments and takes frames of the matching second), resampled to 16 kHz by default.
    One mask per sounding category (union of that category's boxes: the class-aware CIoU GT),
    categories in order of first appearance; ``"class_ids"`` index ``MUSIC_CLASSES``
    (``DSOL_MUSIC_CATEGORIES``), ``"category_ids"`` are the file's ids. Frames without boxes are
    skipped unless ``include_empty`` (DSOL's evaluation skips them); such items have zero masks.
    """

    def __init__(
        self,
        root: PathArg,
        annotations: PathArg | DsolAnnotations,
        *,
        include_empty: bool = False,
        policy: BoxPolicy | str = BoxPolicy.CLIP,
        audio_exts: Sequence[str] = (".flac", ".wav"),
        sample_rate: int | None = 16000,
        duration: float = 1.0,
        **media: Any,
    ) -> None:
        super().__init__(root, sample_rate=sample_rate, duration=duration, **media)
        if not isinstance(annotations, DsolAnnotations):
            annotations = parse_dsol_music_json(annotations, policy=policy)
        self.annotations = annotations
        self.entries = tuple(e for e in annotations.entries if include_empty or e.boxes)
        self.audio_exts = tuple(x if x.startswith(".") else "." + x for x in audio_exts)
        self.vocabulary = ClassVocabulary(MUSIC_CLASSES)

    @property
    def report(self) -> BoxReport:
        return self.annotations.report

    def __len__(self) -> int:
        return len(self.entries)

    def frame_path(self, sample_id: str) -> Path:
        return self.frames_dir / sample_id

    def _audio_file(self, video_id: str, sid: str) -> Path:
        tried = [self.audio_dir / f"{video_id}{ext}" for ext in self.audio_exts]
        for p in tried:
            if p.is_file():
                return p
        raise FileNotFoundError(
            errno.ENOENT,
            f"audio of sample {sid!r} not found: tried {', '.join(map(str, tried))}",
            str(tried[0]),
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        sid = e.key
        frame = self._load_frame(self.frame_path(sid), sid)
        audio, sr = self._load_audio(self._audio_file(e.video_id, sid), sid, start_s=float(e.second))
        cats = e.categories
        masks = np.zeros((len(cats), self.mask_size, self.mask_size), np.float32)
        for s, c in enumerate(cats):
            masks[s] = union_mask((b for b in e.boxes if b.category == c), self.mask_size)
        names = tuple(DSOL_MUSIC_CATEGORIES.get(c, "") for c in cats)
        class_ids = [self.vocabulary.id(n) if n else -1 for n in names]
        return _sample(
            sid, (sid,) * len(cats), audio, sr, masks, class_ids, names, frame=frame,
            category_ids=np.asarray(cats, np.int64),
        )


def collate_samples(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate items into a batch: arrays of one shape are stacked into tensors, numbers become
    tensors, anything else (strings, tuples, arrays of differing shapes such as per-item masks
    with different source counts) stays a list."""
    if not batch:
        raise ValueError("empty batch")
    keys = list(batch[0])
    for i, item in enumerate(batch):
        if list(item) != keys:
            raise ValueError(f"batch item {i} has keys {list(item)}, item 0 has {keys}")
    out: dict[str, Any] = {}
    for k in keys:
        values = [item[k] for item in batch]
        if all(isinstance(v, np.ndarray) for v in values) and len({v.shape for v in values}) == 1:
            out[k] = torch.from_numpy(np.stack(values))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[k] = torch.tensor(values)
        else:
            out[k] = values
    return out
