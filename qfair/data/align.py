"""Five-point face alignment to the standard 112x112 ArcFace template (README references [4], RFW).

A similarity transform (rotation, uniform scale, translation; no reflection) is fitted from the five
landmarks (eyes, nose tip, mouth corners) to the template by least squares (Umeyama 1991), and the
image is warped with Pillow's affine transform (bilinear). Pure numpy + Pillow, no OpenCV.
"""
from __future__ import annotations

import numpy as np

from ..utils.errors import DataError

# insightface arcface_torch template for 112x112 crops: left eye, right eye, nose, left/right mouth corner
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix M of the least-squares similarity with ``dst ~= M @ [src, 1]`` (no reflection).

    ``src``, ``dst``: (K, 2) points, K >= 2. Umeyama, "Least-squares estimation of transformation
    parameters between two point patterns", PAMI 1991.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(src) != len(dst) or len(src) < 2:
        raise DataError(f"alignment needs matching point sets of >= 2 points, got {len(src)} and {len(dst)}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise DataError("landmarks contain NaN or inf")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c ** 2).sum() / len(src)
    if var_s < 1e-12:
        raise DataError("landmarks are degenerate (all points coincide)")
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0  # forbid reflections
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def warp_affine(image: np.ndarray, m: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp uint8 (H, W, 3) with the 2x3 matrix ``m`` (input pixel index -> output pixel index, the
    OpenCV ``warpAffine`` convention) into a (size, size, 3) image, bilinear, black outside."""
    from PIL import Image

    a = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(a)[:2]
    # Pillow samples output pixel centres (x + 0.5) in continuous coordinates; convert from index space
    lin, t = inv[:, :2], inv[:, 2]
    t_c = t + 0.5 - lin @ np.array([0.5, 0.5])
    coeffs = (lin[0, 0], lin[0, 1], t_c[0], lin[1, 0], lin[1, 1], t_c[1])
    out = Image.fromarray(np.ascontiguousarray(image)).transform((size, size), Image.AFFINE, coeffs,
                                                                  resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out, dtype=np.uint8)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Align a face given its five landmarks ((5, 2) or 10 numbers x1 y1 ... x5 y5) -> uint8 (112, 112, 3)."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    tmpl = ARCFACE_TEMPLATE * (size / 112.0)
    return warp_affine(image, umeyama_similarity(pts, tmpl), size)
