import numpy as np
import pytest

from streamloc.tracking import ObjectTracker
from streamloc.types import SoundingObject


def obj(vector, cells):
    cells = np.array(cells, bool)
    return SoundingObject(id=-1, heatmap=np.zeros(cells.shape, np.float32), mask=cells.copy(), box=None,
                          centroid=None, score=1.0, vector=np.array(vector, np.float32), cells=cells)


A = ([1, 0, 0], [[1, 1, 0], [0, 0, 0]])
B = ([0, 1, 0], [[0, 0, 0], [0, 1, 1]])
C = ([0, 0, 1], [[0, 0, 1], [1, 0, 0]])


def test_ids_follow_objects_when_their_order_changes():
    t = ObjectTracker()
    assert [o.id for o in t.update([obj(*A), obj(*B)])] == [0, 1]
    assert [o.id for o in t.update([obj(*B), obj(*A)])] == [1, 0]
    assert [o.id for o in t.update([obj(*C), obj(*A)])] == [2, 0]  # a new object gets a new id


def test_a_briefly_missing_object_keeps_its_id_then_expires():
    t = ObjectTracker(max_missed=2)
    t.update([obj(*A), obj(*B)])
    t.update([obj(*A)])
    assert [o.id for o in t.update([obj(*A), obj(*B)])] == [0, 1]
    for _ in range(3):
        t.update([obj(*A)])
    assert [o.id for o in t.update([obj(*A), obj(*B)])] == [0, 2]


def test_greedy_matching_prefers_the_strongest_pair():
    t = ObjectTracker(vector_weight=1.0, min_affinity=0.1)
    t.update([obj([1, 0, 0], A[1]), obj([0, 1, 0], B[1])])
    # the new object is closer to track 0 than to track 1, the other one closer to track 1
    out = t.update([obj([0.9, 0.1, 0], B[1]), obj([0.2, 1, 0], A[1])])
    assert [o.id for o in out] == [0, 1]


def test_objects_are_matched_by_their_masks_not_by_overlapping_ioi_cells():
    # Under the paper's IOI rule both objects claim nearly every grid cell, and their vectors (means
    # over those broad regions) are alike; their masks (heatmap >= threshold) are what tells them apart.
    everywhere = np.ones((7, 7), bool)
    left, right = np.zeros((480, 640), bool), np.zeros((480, 640), bool)
    left[100:300, 50:250] = True
    right[150:400, 380:600] = True

    def seen(vector, mask):
        return SoundingObject(id=-1, heatmap=mask.astype(np.float32), mask=mask, box=None, centroid=None, score=1.0,
                              vector=np.array(vector, np.float32), cells=everywhere.copy())

    for region, expected in (("mask", [1, 0]), ("cells", [0, 1])):
        t = ObjectTracker(region=region)
        assert [o.id for o in t.update([seen([1, 0.10], left), seen([1, 0.12], right)])] == [0, 1]
        # next tick: listed in the other order, vectors drifted so that each is now closer to the
        # other's track; the masks keep the ids right, the all-grid cells (the earlier matching) cannot
        assert [o.id for o in t.update([seen([1, 0.105], right), seen([1, 0.115], left)])] == expected, region


@pytest.mark.parametrize("shape, side", [((480, 640), 64), ((7, 7), 7), ((1080, 1920), 64), ((65, 10), 33)])
def test_regions_are_subsampled_to_at_most_region_side(shape, side):
    from streamloc.tracking import REGION_SIDE, _region

    mask = np.zeros(shape, bool)
    mask[: shape[0] // 2] = True
    region = _region(mask)
    assert max(region.shape) == side <= REGION_SIDE
    assert region.dtype == bool and region.any() and not region.all()


def test_reset_and_bad_weight():
    t = ObjectTracker()
    t.update([obj(*A)])
    t.reset()
    assert [o.id for o in t.update([obj(*B)])] == [0]
    with pytest.raises(ValueError):
        ObjectTracker(vector_weight=2.0)
    with pytest.raises(ValueError, match="region must be one of"):
        ObjectTracker(region="boxes")
