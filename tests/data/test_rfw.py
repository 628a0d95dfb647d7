import numpy as np
import pytest
import torch
from PIL import Image

from qfair.data import open_benchmark, read_rfw
from qfair.data.align import ARCFACE_TEMPLATE
from qfair.utils.errors import DataError


def _face(seed, size=112):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_rfw(root, races=("African", "Asian"), unaligned=False, shared_names=False):
    """Tiny RFW tree: per race 2 identities x 3 images, 2 genuine + 2 impostor pairs (``shared_names``:
    the same identity names in every race, which real RFW never has but other benchmarks may)."""
    truth = {}
    for r_i, race in enumerate(races):
        txt = root / "test" / "txts" / race
        txt.mkdir(parents=True)
        lmk_lines = []
        for k in range(2):
            ident = f"id{k}" if shared_names else f"m.{race[:2]}{k}"
            d = root / "test" / "data" / race / ident
            d.mkdir(parents=True)
            for n in range(1, 4):
                arr = _face(100 * r_i + 10 * k + n, 200 if unaligned else 112)
                Image.fromarray(arr).save(d / f"{ident}_{n:04d}.png", format="PNG")
                # PNG content under a .jpg name keeps pixels exact for the round trip
                (d / f"{ident}_{n:04d}.png").rename(d / f"{ident}_{n:04d}.jpg")
                truth[f"{race}/{ident}_{n}"] = arr
                pts = ARCFACE_TEMPLATE * 1.5 + 10
                lmk_lines.append(f"./test/data/{race}/{ident}/{ident}_{n:04d}.jpg\t{k}\t" +
                                 " ".join(f"{v:.4f}" for v in pts.reshape(-1)))
        a, b = ("id0", "id1") if shared_names else (f"m.{race[:2]}0", f"m.{race[:2]}1")
        (txt / f"{race}_pairs.txt").write_text(f"{a}\t1\t2\n{b}\t2\t3\n{a}\t1\t{b}\t1\n{a}\t3\t{b}\t2\n")
        (txt / f"{race}_lmk.txt").write_text("\n".join(lmk_lines) + "\n")
    return truth


def test_roundtrip(tmp_path):
    truth = make_rfw(tmp_path)
    vs = read_rfw(tmp_path)
    assert vs.group_names() == ["African", "Asian"]
    assert vs.issame.tolist() == [True, True, False, False] * 2
    assert vs.pair_ids[2].tolist() == ["m.Af0", "m.Af1"]
    # images stored once: African uses 5 distinct images (0_1, 0_2, 1_2, 1_3, 1_1, 0_3) -> 6
    assert len(vs.images) == 12
    first = vs.pairs[0, 0]
    assert torch.equal(vs.images[first], torch.from_numpy(truth["African/m.Af0_1"]).permute(2, 0, 1))
    assert open_benchmark(f"rfw:{tmp_path}").name == "rfw"
    assert open_benchmark(f"myrfw:{tmp_path / 'test'}").name == "myrfw"


def test_unaligned_images_are_aligned(tmp_path):
    make_rfw(tmp_path, races=("Indian",), unaligned=True)
    vs = read_rfw(tmp_path)
    assert vs.images[0].shape == (3, 112, 112)


def test_bad_pairs_line_names_file_and_line(tmp_path):
    make_rfw(tmp_path, races=("African",))
    p = tmp_path / "test" / "txts" / "African" / "African_pairs.txt"
    p.write_text(p.read_text() + "only\ttwo\n")
    with pytest.raises(DataError, match=r"African_pairs.txt:5: expected 3 fields"):
        read_rfw(tmp_path)


def test_missing_image_error_and_skip(tmp_path):
    make_rfw(tmp_path, races=("African",))
    (tmp_path / "test" / "data" / "African" / "m.Af1" / "m.Af1_0003.jpg").unlink()
    with pytest.raises(DataError, match="m.Af1_0003.jpg not found"):
        read_rfw(tmp_path)
    vs = read_rfw(tmp_path, skip_corrupt=True)
    assert len(vs) == 3 and vs.meta["skipped_pairs"] == 1


def test_corrupt_image_named(tmp_path):
    make_rfw(tmp_path, races=("Asian",))
    (tmp_path / "test" / "data" / "Asian" / "m.As0" / "m.As0_0001.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="m.As0_0001.jpg"):
        read_rfw(tmp_path)
    vs = read_rfw(tmp_path, skip_corrupt=True)
    assert vs.meta["skipped_images"] == 1 and len(vs) == 2


def test_not_rfw(tmp_path):
    with pytest.raises(DataError, match="not an RFW folder"):
        read_rfw(tmp_path)


def test_same_identity_names_in_two_races_read_their_own_images(tmp_path):
    truth = make_rfw(tmp_path, shared_names=True)
    vs = read_rfw(tmp_path)
    assert len(vs.images) == 12  # before: 6, the Asian pairs silently read the African images
    asian = int(np.flatnonzero(vs.groups == "Asian")[0])
    got = vs.images[vs.pairs[asian, 0]]
    assert torch.equal(got, torch.from_numpy(truth["Asian/id0_1"]).permute(2, 0, 1))
