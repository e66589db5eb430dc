"""Dataset loaders for the official annotation formats and the mixture protocols.

* :mod:`training.data.annotations` — pure parsers (VGG-SS JSON, Flickr XML/CSV, VGGSound and
  VGGSound-Instruments pairings, MUSIC in the AVGN and DSOL layouts, DSOL AudioSet boxes).
* :mod:`training.data.boxes` — the canonical :class:`Box`, :class:`BoxPolicy`, box reports and
  GT-mask rasterisation.
* :mod:`training.data.audio` — audio windows (soundfile / PyAV, soxr) and RGB frames (OpenCV).
* :mod:`training.data.mixtures` — the four mixture protocols.
* :mod:`training.data.datasets` — torch Datasets (imported lazily: needs torch).
"""

from __future__ import annotations

from training.data.annotations import (
    DSOL_MUSIC_CATEGORIES,
    MUSIC_CLASSES,
    DsolAnnotations,
    DsolAudiosetAnnotations,
    DsolAudiosetEntry,
    DsolFrame,
    FlickrAnnotation,
    FlickrAnnotations,
    MusicAnnotations,
    MusicEntry,
    PairingRow,
    VggssAnnotations,
    VggssEntry,
    music_video_id,
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
    vggsound_class_key,
)
from training.data.boxes import (
    Box,
    BoxIssue,
    BoxPolicy,
    BoxReport,
    avgn_misread_mask,
    box_mask,
    flickr_consensus_mask,
    union_mask,
)
from training.data.errors import AnnotationError, MediaError
from training.data.mixtures import (
    GridMixture,
    grid_2x2,
    mix_logspec_average,
    mix_rms_average,
    mix_waveform_sum,
    rms_normalize,
    stack_frames_vertical,
)

_LAZY = {
    "FlickrSoundNetDataset",
    "VggssDataset",
    "VggsoundMixtureDataset",
    "MusicAvgnDataset",
    "MusicDsolDataset",
    "ClassVocabulary",
    "collate_samples",
}

__all__ = [
    "AnnotationError",
    "MediaError",
    "Box",
    "BoxIssue",
    "BoxPolicy",
    "BoxReport",
    "box_mask",
    "union_mask",
    "flickr_consensus_mask",
    "avgn_misread_mask",
    "MUSIC_CLASSES",
    "DSOL_MUSIC_CATEGORIES",
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
    "mix_waveform_sum",
    "rms_normalize",
    "mix_rms_average",
    "mix_logspec_average",
    "stack_frames_vertical",
    "GridMixture",
    "grid_2x2",
    *sorted(_LAZY),
]


def __getattr__(name: str):
    # Datasets import torch; keep `import training.data` light for the parsers.
    if name in _LAZY:
        from training.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'training.data' has no attribute {name!r}")
