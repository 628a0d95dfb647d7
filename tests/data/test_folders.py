import numpy as np
import pytest
import torch
from PIL import Image

from qfair.data import FlatFolder, ImageFolder
from qfair.data.folders import LoaderStats, open_image_source, stream
from qfair.data.recordio import RecordIO
from qfair.utils.errors import DataError


def _tree(root, ids=("bob", "amy"), per=2, corrupt=None):
    imgs = {}
    for k, name in enumerate(ids):
        (root / name).mkdir(parents=True)
        for j in range(per):
            arr = np.full((112, 112, 3), 10 * k + j, np.uint8)
            p = root / name / f"{j}.png"
            Image.fromarray(arr).save(p)
            imgs[p] = arr
    if corrupt:
        (root / ids[0] / corrupt).write_bytes(b"not an image")
    return imgs


def test_image_folder_labels_sorted(tmp_path):
    _tree(tmp_path)
    ds = ImageFolder(tmp_path)
    assert ds.classes == ["amy", "bob"] and ds.targets.tolist() == [0, 0, 1, 1]
    img, label = ds[2]
    assert img.shape == (112, 112, 3) and img[0, 0, 0] == 0 and label == 1


def test_empty_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no images"):
        ImageFolder(tmp_path)
    with pytest.raises(DataError, match="no images"):
        FlatFolder(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="loose images"):
        ImageFolder(tmp_path)
    assert len(FlatFolder(tmp_path)) == 1


def test_open_image_source_kinds(tmp_path):
    _tree(tmp_path / "f")
    assert isinstance(open_image_source(tmp_path / "f"), ImageFolder)
    assert isinstance(open_image_source(tmp_path / "f", labelled=False), FlatFolder)
    from qfair.data import write_recordio

    write_recordio(tmp_path / "r" / "train.rec", [(np.zeros((112, 112, 3), np.uint8), 0)]) if (tmp_path / "r").mkdir() is None else None
    assert isinstance(open_image_source(tmp_path / "r"), RecordIO)


def test_stream_corrupt_named_or_counted(tmp_path):
    _tree(tmp_path, corrupt="bad.jpg")
    ds = ImageFolder(tmp_path)
    with pytest.raises(DataError, match="bad.jpg"):
        list(stream(ds, 2))
    stats = LoaderStats()
    batches = list(stream(ds, 2, skip_corrupt=True, stats=stats))
    assert stats.skipped == 1 and stats.images == 4 and sum(len(y) for _, y in batches) == 4
    x, _ = batches[0]
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 112, 112)


def test_stream_workers_same_as_inline(tmp_path):
    _tree(tmp_path)
    ds = ImageFolder(tmp_path)
    a = torch.cat([x for x, _ in stream(ds, 3, shuffle=True, seed=1)])
    b = torch.cat([x for x, _ in stream(ds, 3, shuffle=True, seed=1, num_workers=2)])
    assert torch.equal(a, b)


def test_a_file_where_a_folder_is_expected_is_named(tmp_path):
    f = tmp_path / "text.pt"
    f.write_text("hello")
    for cls in (FlatFolder, ImageFolder):
        with pytest.raises(DataError, match="text.pt: exists but is a file, not an image folder"):
            cls(f)
    with pytest.raises(DataError, match=r"text.pt: exists but is not a folder.*Accepted: a folder of images.*\.rec"):
        open_image_source(f)
