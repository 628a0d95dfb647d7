import io

import numpy as np
import pytest
import torch
from PIL import Image

from qfair.data import decode_image, flip, to_model_input
from qfair.data.preprocess import encode_png, from_model_input, hwc_to_nchw
from qfair.utils.errors import DataError


def test_to_model_input_hand_values():
    x = torch.tensor([0, 255, 127, 128], dtype=torch.uint8).view(1, 1, 1, 4).expand(1, 3, 1, 4).contiguous()
    y = to_model_input(x)
    # (x / 255 - 0.5) / 0.5, hand computed
    expect = torch.tensor([-1.0, 1.0, 127 / 255 * 2 - 1, 128 / 255 * 2 - 1])
    assert y.dtype == torch.float32 and y.shape == (1, 3, 1, 4)
    torch.testing.assert_close(y[0, 0, 0], expect)


def test_to_model_input_numpy_nhwc_and_chw():
    arr = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    y = to_model_input(arr)
    assert y.shape == (2, 3, 5, 6)
    assert torch.allclose(y[1, 2, 3, 4], torch.tensor(arr[1, 3, 4, 2] / 127.5 - 1.0, dtype=torch.float32), atol=1e-6)
    assert to_model_input(hwc_to_nchw(arr)[0]).shape == (1, 3, 5, 6)


def test_to_model_input_refuses_float():
    with pytest.raises(DataError, match="uint8"):
        to_model_input(torch.zeros(1, 3, 4, 4))


def test_from_model_input_roundtrip():
    x = torch.randint(0, 256, (2, 3, 7, 7), dtype=torch.uint8)
    assert torch.equal(from_model_input(to_model_input(x)), x)


def test_flip():
    x = torch.arange(6).view(1, 1, 2, 3)
    assert flip(x)[0, 0].tolist() == [[2, 1, 0], [5, 4, 3]]


def test_decode_png_exact_and_resize(tmp_path, monkeypatch):
    from qfair.data import preprocess

    monkeypatch.setattr(preprocess, "_WARNED_SIZES", set())
    img = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_png(img)), img)
    p = tmp_path / "a.png"
    Image.fromarray(img[:50, :60]).save(p)
    with pytest.warns(UserWarning, match="not square"):
        out = decode_image(p)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    # grey and RGBA become RGB
    buf = io.BytesIO()
    Image.fromarray(img[:, :, 0]).save(buf, format="PNG")
    g = decode_image(buf.getvalue())
    assert np.array_equal(g[..., 0], g[..., 2])


def test_decode_corrupt_names_file(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        decode_image(p)
    with pytest.raises(DataError, match="not found"):
        decode_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="empty"):
        decode_image(b"")
    good = encode_png(np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(DataError, match="x.png"):
        decode_image(good[: len(good) // 2], name="x.png")
