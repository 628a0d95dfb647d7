import numpy as np
import pytest

from qfair.data.align import ARCFACE_TEMPLATE, align_face, umeyama_similarity, warp_affine
from qfair.utils.errors import DataError


def _sim(scale, angle, tx, ty):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def test_umeyama_recovers_known_similarity():
    m = _sim(1.7, 0.3, 12.0, -5.0)
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    dst = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(umeyama_similarity(src, dst), m, atol=1e-9)


def test_umeyama_refuses_reflection_and_degenerate():
    src = np.array([[0, 0], [1, 0], [0, 1.0]])
    dst = src * [-1, 1]  # a mirror image: best proper similarity is not a reflection
    m = umeyama_similarity(src, dst)
    assert np.linalg.det(m[:, :2]) > 0
    with pytest.raises(DataError, match="degenerate"):
        umeyama_similarity(np.zeros((5, 2)), ARCFACE_TEMPLATE)


def test_warp_matches_opencv_convention():
    # integer translation by (+3, +2) must move pixel (x, y) to (x+3, y+2) exactly (index convention)
    img = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    out = warp_affine(img, np.array([[1.0, 0, 3], [0, 1.0, 2]]), size=20)
    assert np.array_equal(out[2:, 3:], img[:-2, :-3])


def test_align_face_puts_landmarks_on_template():
    # draw 5 bright dots in a 250x250 image, rotated/scaled relative to the template, then align
    m = _sim(2.1, -0.25, 30.0, 40.0)
    pts = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    img = np.zeros((250, 250, 3), np.uint8)
    for x, y in pts:
        img[round(y) - 2:round(y) + 3, round(x) - 2:round(x) + 3] = 255
    out = align_face(img, pts.reshape(-1))
    assert out.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE:
        assert out[round(y), round(x)].min() > 120
