"""A plain pairs list for any benchmark with group labels: CSV ``path1,path2,same,group``.

Optional header line (``path1,path2,same,group[,id1,id2]``); ``group`` may be omitted ("all");
``id1,id2`` (identity labels, for the identity bootstrap) may follow. Paths are relative to the CSV's
folder unless absolute. ``same`` is 1/0, true/false or yes/no. Tab-separated files work too.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..utils.errors import DataError
from .verification import LazyImageStore, VerificationSet, finish_validated, path_exists

_TRUE = {"1", "true", "yes", "same", "genuine", "y", "t"}
_FALSE = {"0", "false", "no", "different", "impostor", "n", "f"}


def _parse_same(v: str, where: str) -> bool:
    s = v.strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise DataError(f"{where}: 'same' must be 1/0, true/false or yes/no, got {v!r}")


def read_pairs_csv(path: str | Path, *, name: str | None = None, skip_corrupt: bool = False,
                   validate: bool = True) -> VerificationSet:
    """Read a pairs CSV as a :class:`VerificationSet` (distinct image paths stored once)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: pairs file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    lines = text.splitlines()
    delim = "\t" if (path.suffix.lower() == ".tsv" or (lines and "\t" in lines[0])) else ","
    base = path.parent
    index: dict[str, int] = {}
    sources: list[str] = []
    pairs, issame, groups, ids = [], [], [], []
    has_ids = None
    skipped = 0
    try:
        rows = list(csv.reader(lines, delimiter=delim))
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    for lineno, row in enumerate(rows, 1):
        where = f"{path}:{lineno}"
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        row = [c.strip() for c in row]
        if lineno == 1 and row[0].lower() in ("path1", "image1", "img1", "path_1"):
            continue  # header
        if len(row) not in (3, 4, 6):
            raise DataError(f"{where}: expected 3 or 4 fields (path1,path2,same[,group]) or 6 (...,id1,id2), "
                            f"got {len(row)}: {','.join(row)[:80]!r}")
        same = _parse_same(row[2], where)
        if has_ids is None:
            has_ids = len(row) == 6
        elif has_ids != (len(row) == 6):
            raise DataError(f"{where}: identity columns id1,id2 must be given on every line or on none")
        full = []
        for p in row[:2]:
            if not p:
                raise DataError(f"{where}: empty image path")
            fp = Path(p) if Path(p).is_absolute() else base / p
            full.append(fp)
        missing = [fp for fp in full if not path_exists(fp)]
        if missing:
            if skip_corrupt:
                skipped += 1
                continue
            raise DataError(f"{where}: image {missing[0]} not found (use --skip-corrupt to skip such pairs)")
        pair = []
        for fp in full:
            key = str(fp)
            if key not in index:
                index[key] = len(sources)
                sources.append(key)
            pair.append(index[key])
        pairs.append(pair)
        issame.append(same)
        groups.append(row[3] if len(row) >= 4 and row[3] else "all")
        if has_ids:
            ids.append((row[4], row[5]))
    if not pairs:
        raise DataError(f"{path}: no pairs" + (f" ({skipped} skipped for missing images)" if skipped else ""))
    vset = VerificationSet(name=name or path.stem, images=LazyImageStore(sources, sources), pairs=pairs,
                           issame=issame, groups=np.asarray(groups), pair_ids=ids if has_ids else None,
                           meta={"source": str(path), "format": "csv", "skipped_pairs": skipped})
    return finish_validated(vset, skip_corrupt) if validate else vset
