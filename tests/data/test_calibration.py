import numpy as np
import pytest
import torch
from PIL import Image

from qfair.data import calibration_batches, write_bin, write_recordio
from qfair.utils.errors import DataError, QfairError


def _check(batches, n, bs):
    assert [len(b) for b in batches] == [bs] * (n // bs) + ([n % bs] if n % bs else [])
    for b in batches:
        assert b.dtype == torch.float32 and b.shape[1:] == (3, 112, 112) and b.min() >= -1 and b.max() <= 1


def _faces(n):
    return [np.random.default_rng(i).integers(0, 256, (112, 112, 3), dtype=np.uint8) for i in range(n)]


def test_builtin_sources_seeded():
    a = calibration_batches("builtin", 10, 4, seed=1)
    _check(a, 10, 4)
    b = calibration_batches("builtin", 10, 4, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    s = calibration_batches("builtin-synthetic", 5, 8)
    _check(s, 5, 8)


def test_real_folder_rec_and_bin(tmp_path):
    imgs = _faces(6)
    for i, im in enumerate(imgs):
        (tmp_path / "f" / f"id{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "f" / f"id{i % 2}" / f"{i}.png")
    _check(calibration_batches(f"real:{tmp_path / 'f'}", 5, 2), 5, 2)
    write_recordio(tmp_path / "r" / "train.rec", [(im, 0) for im in imgs], fmt="png") \
        if not (tmp_path / "r").mkdir() else None
    rec = calibration_batches(f"real:{tmp_path / 'r'}", 6, 6)
    _check(rec, 6, 6)
    # all 6 images, in index order: exactly the written pixels
    assert torch.allclose(rec[0][0], (torch.from_numpy(imgs[0]).permute(2, 0, 1).float() / 255 - 0.5) / 0.5)
    write_bin(tmp_path / "x.bin", imgs, [True, False, True])
    _check(calibration_batches(f"real:{tmp_path / 'x.bin'}", 4, 4), 4, 4)
    with pytest.raises(DataError, match="holds only 6"):
        calibration_batches(f"real:{tmp_path / 'f'}", 7, 2)


def test_synthetic_folder_flat(tmp_path):
    for i, im in enumerate(_faces(3)):
        Image.fromarray(im).save(tmp_path / f"g{i}.png")
    _check(calibration_batches(f"synthetic:{tmp_path}", 3, 2), 3, 2)


def test_data_free_needs_model_and_works_with_one():
    with pytest.raises(DataError, match="needs the model"):
        calibration_batches("synthetic", 4, 2)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    from qfair.data.synthesis import SynthSettings

    out = calibration_batches("synthetic", 3, 2, model=model, synth_settings=SynthSettings(iters=2, batch_size=2))
    _check(out, 3, 2)


def test_bad_sources():
    with pytest.raises(QfairError, match="unknown calibration source"):
        calibration_batches("imagenet:/x", 4, 2)
    with pytest.raises(DataError, match="needs a path"):
        calibration_batches("real", 4, 2)
    with pytest.raises(DataError):
        calibration_batches("builtin", 0, 2)


def test_data_free_cached_and_on_the_png_grid(tmp_path, monkeypatch):
    from qfair.data.synthesis import SynthSettings, cache_dir

    monkeypatch.setenv("QFAIR_CACHE_DIR", str(tmp_path))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.BatchNorm2d(4))
    s = SynthSettings(iters=1, batch_size=2)
    a = calibration_batches("synthetic", 2, 2, model=model, synth_settings=s)
    assert len(list(cache_dir().glob("*.pt"))) == 1
    # values are exactly representable as uint8 images: (k / 255 - 0.5) / 0.5
    k = (a[0] * 0.5 + 0.5) * 255
    assert torch.allclose(k, k.round(), atol=1e-4)
    b = calibration_batches("synthetic", 2, 2, model=model, synth_settings=s)  # from the cache
    assert torch.equal(a[0], b[0])
    with torch.no_grad():
        model[1].running_mean += 1  # other statistics -> another cache entry
    calibration_batches("synthetic", 2, 2, model=model, synth_settings=s)
    assert len(list(cache_dir().glob("*.pt"))) == 2
    monkeypatch.setenv("QFAIR_CACHE_DIR", "off")
    assert cache_dir() is None


def test_real_source_that_is_a_plain_file(tmp_path):
    f = tmp_path / "text.pt"
    f.write_text("hello")
    with pytest.raises(DataError, match=r"text.pt: exists but is not a folder.*Accepted: .*\.rec.*\.bin"):
        calibration_batches(f"real:{f}", 4, 4)


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(DataError, match=r"n must be a whole number >= 1, got 16\.0"):
        calibration_batches("builtin", n=16.0, batch_size=4)
    with pytest.raises(DataError, match=r"batch_size must be a whole number >= 1, got True"):
        calibration_batches("builtin", n=4, batch_size=True)
    with pytest.raises(DataError, match=r"'builtin' takes no ':tiny' part"):  # used to be ignored silently
        calibration_batches("builtin:tiny", n=4, batch_size=4)
    with pytest.raises(DataError, match=r"model must be a torch nn.Module, got PosixPath.*qfair.load_model"):
        calibration_batches("synthetic", n=4, batch_size=4, model=tmp_path / "r50.pth")
    assert len(calibration_batches("builtin", n=np.int64(4), batch_size=2)) == 2  # numpy integers are whole numbers


def test_more_images_than_memory_is_a_clear_error_before_any_work():
    from qfair.data.calibration import IMAGE_BYTES, check_fits_in_memory

    check_fits_in_memory(100, available=400 * IMAGE_BYTES)  # a quarter of it: fine
    check_fits_in_memory(100, available=None)  # unknown: no guess
    with pytest.raises(DataError, match=r"n=300 images .*more than half.*at most 200 images"):
        check_fits_in_memory(300, available=400 * IMAGE_BYTES)
    # 10^9 images are ~150 TB: refused at once instead of the kernel killing the process minutes later
    with pytest.raises(DataError, match="--calib-size"):
        calibration_batches("builtin", 10**9, 64)
