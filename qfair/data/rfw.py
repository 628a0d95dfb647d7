"""RFW (Racial Faces in-the-Wild) in its published layout (README references [4]):

``<root>/test/data/<Race>/<identity>/<identity>_000N.jpg``, ``<root>/test/txts/<Race>/<Race>_pairs.txt``
(tab separated, no header; genuine ``id n1 n2``, impostor ``id1 n1 id2 n2``; folds = index // 600) and
``<Race>_lmk.txt`` (``path <n> x1 y1 ... x5 y5``). Images that are not 112x112 are aligned to the ArcFace
template from their landmarks. ``root`` may be the RFW folder or its ``test`` folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import DataError
from .verification import LazyImageStore, VerificationSet, finish_validated, make_folds, path_exists

RACES = ("African", "Asian", "Caucasian", "Indian")


def _image_name(identity: str, n: str, where: str) -> str:
    try:
        num = int(n)
    except ValueError:
        raise DataError(f"{where}: image number {n!r} is not an integer") from None
    if num < 0:
        raise DataError(f"{where}: image number {n!r} is negative")
    return f"{identity}/{identity}_{num:04d}.jpg"


def read_landmarks(path: Path) -> dict[str, np.ndarray]:
    """``<identity>/<file>`` -> (5, 2) landmarks from an RFW ``_lmk.txt``."""
    out: dict[str, np.ndarray] = {}
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                nums = [float(v) for v in parts[-10:]]
            except ValueError:
                nums = []
            if len(parts) < 11 or len(nums) != 10:
                raise DataError(f"{path}:{lineno}: expected 'path [n] x1 y1 ... x5 y5', got {line.strip()[:80]!r}")
            if not all(np.isfinite(nums)):
                raise DataError(f"{path}:{lineno}: landmarks contain NaN or inf: {line.strip()[:80]!r}. Fix the "
                                f"line or remove it (the image is then used only if it is already 112x112)")
            key = "/".join(Path(parts[0]).parts[-2:])
            out[key] = np.asarray(nums, dtype=np.float64).reshape(5, 2)
    return out


def _load_rfw_image(src: tuple[str, Any, str], name: str) -> np.ndarray:
    from .align import align_face
    from .preprocess import decode_image

    path, lmk, lmk_file = src
    img = decode_image(path, name=name, size=None)
    if img.shape[:2] == (112, 112):
        return img
    if lmk is None:
        missing = "has no entry for it" if Path(lmk_file).is_file() else "does not exist"
        raise DataError(f"{name}: image is {img.shape[1]}x{img.shape[0]}, not an aligned 112x112 face, and the "
                        f"landmark file {lmk_file} {missing}; add its five landmarks there to align it")
    try:
        return align_face(img, lmk)
    except DataError as exc:
        raise DataError(f"{name}: {exc} (landmarks from {lmk_file})") from None


def _find_test_dir(root: Path) -> Path:
    for cand in (root / "test", root):
        if (cand / "txts").is_dir():
            return cand
    raise DataError(f"{root}: not an RFW folder (expected test/txts/<Race>/<Race>_pairs.txt and test/data/<Race>/)")


def read_rfw(root: str | Path, *, races: tuple[str, ...] | None = None, skip_corrupt: bool = False,
             validate: bool = True) -> VerificationSet:
    """Read RFW as one :class:`VerificationSet` with the race as each pair's group.

    A pairs line with the wrong number of fields is an error naming file:line; a pair naming a missing
    image is an error too, or (``skip_corrupt``) skipped and counted in ``meta['skipped_pairs']``.
    """
    root = Path(root)
    test = _find_test_dir(root)
    races = races or tuple(r for r in RACES if (test / "txts" / r / f"{r}_pairs.txt").is_file())
    if not races:
        raise DataError(f"{test / 'txts'}: no <Race>/<Race>_pairs.txt files for races {', '.join(RACES)}")
    index: dict[str, int] = {}
    sources: list[tuple[str, Any]] = []
    names: list[str] = []
    pairs, issame, groups, ids = [], [], [], []
    skipped_pairs = 0
    for race in races:
        pfile = test / "txts" / race / f"{race}_pairs.txt"
        if not pfile.is_file():
            raise DataError(f"{pfile}: pairs file not found")
        lfile = test / "txts" / race / f"{race}_lmk.txt"
        lmks = read_landmarks(lfile) if lfile.is_file() else {}
        race_pairs = 0
        for lineno, line in enumerate(pfile.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
            text = line.strip()  # a trailing tab or space must not decide how the line is split
            if not text:
                continue
            f = [x.strip() for x in text.split("\t")] if "\t" in text else text.split()
            where = f"{pfile}:{lineno}"
            if len(f) == 3:
                a, na, nb = f
                b = a
                same = True
            elif len(f) == 4:
                a, na, b, nb = f
                same = False
            else:
                raise DataError(f"{where}: expected 3 fields (id n1 n2) or 4 (id1 n1 id2 n2), got {len(f)}: "
                                f"{line.strip()[:80]!r}")
            keys = (_image_name(a, na, where), _image_name(b, nb, where))
            missing = [k for k in keys if not path_exists(test / "data" / race / k)]
            if missing:
                if skip_corrupt:
                    skipped_pairs += 1
                    continue
                raise DataError(f"{where}: image {test / 'data' / race / missing[0]} not found "
                                f"(use --skip-corrupt to skip such pairs)")
            pair = []
            for k in keys:
                key = f"{race}/{k}"  # identity names are unique in RFW, but not in every benchmark in its layout
                if key not in index:
                    index[key] = len(sources)
                    sources.append((str(test / "data" / race / k), lmks.get(k), str(lfile)))
                    names.append(str(test / "data" / race / k))
                pair.append(index[key])
            pairs.append(pair)
            issame.append(same)
            groups.append(race)
            ids.append((a, b))
            race_pairs += 1
        if race_pairs == 0:
            raise DataError(f"{pfile}: no usable pairs")
    vset = VerificationSet(name="rfw", images=LazyImageStore(sources, names, _load_rfw_image), pairs=pairs,
                           issame=issame, groups=groups, pair_ids=ids, folds=make_folds(np.asarray(groups)),
                           meta={"source": str(root), "format": "rfw", "skipped_pairs": skipped_pairs})
    return finish_validated(vset, skip_corrupt) if validate else vset
