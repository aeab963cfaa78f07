"""Box overlap (``tracker.geometry.boxes``) against areas worked out by hand."""

import numpy as np
import pytest

from tracker.geometry.boxes import box_iou, square_corners


def test_iou_of_corner_boxes():
    a = np.array([0.0, 0.0, 10.0, 10.0])
    assert box_iou(a, a) == 1.0
    assert box_iou(a, [5.0, 0.0, 15.0, 10.0]) == pytest.approx(50 / 150)
    assert box_iou(a, [2.0, 2.0, 4.0, 4.0]) == pytest.approx(4 / 100)  # inside
    assert box_iou(a, [10.0, 0.0, 20.0, 10.0]) == 0.0  # touching
    assert box_iou(a, [30.0, 30.0, 40.0, 40.0]) == 0.0
    assert box_iou([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]) == 0.0  # empty union
    assert box_iou(a, [5.0, 5.0, 15.0, 15.0]) == box_iou([5.0, 5.0, 15.0, 15.0], a)


def test_float32_boxes_keep_their_precision():
    a, b = np.float32([0.1, 0.2, 10.3, 10.7]), np.float32([3.3, 1.1, 12.9, 9.4])
    inter = (np.float32(10.3) - np.float32(3.3)) * (np.float32(9.4) - np.float32(1.1))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    assert box_iou(a, b) == float(inter / union)


def test_square_boxes():
    np.testing.assert_array_equal(square_corners(np.array([2.0, 3.0, 4.0])), [2.0, 3.0, 6.0, 7.0])
    assert box_iou(square_corners([0.0, 0.0, 10.0]), square_corners([5.0, 5.0, 10.0])) == pytest.approx(25 / 175)
