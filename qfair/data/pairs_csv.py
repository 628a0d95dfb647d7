"""A plain pairs list for any benchmark with group labels: CSV ``path1,path2,same,group``.

Optional header line (``path1,path2,same,group[,id1,id2]``, the first line that is not blank or a
``#`` comment; columns are read by position, and a header naming them in another order is an error);
``group`` may be omitted ("all");
``id1,id2`` (identity labels, for the identity bootstrap) may follow. Paths are relative to the CSV's
folder unless absolute. ``same`` is 1/0, true/false or yes/no. Tab-separated files work too: a ``.tsv``
file, or any file whose first line that is not blank or a ``#`` comment holds a tab.
"""
from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from ..utils.errors import DataError
from .verification import LazyImageStore, VerificationSet, _decode_loader, finish_validated, path_exists

# header names qfair recognises, per column position (columns are read by position, not by name)
_COLUMN_NAMES = (
    {"path1", "image1", "img1", "path_1", "image_1", "img_1", "path_a", "image_a", "img_a", "left", "file1"},
    {"path2", "image2", "img2", "path_2", "image_2", "img_2", "path_b", "image_b", "img_b", "right", "file2"},
    {"same", "issame", "is_same", "label", "match", "genuine"},
    {"group", "race", "ethnicity", "demographic", "attribute"},
)
# the unambiguous ones: a header with one of these in another column has its columns in the wrong order
_STRICT_NAMES = ({"path1", "image1", "img1", "path_1"}, {"path2", "image2", "img2", "path_2"},
                 {"same", "issame", "is_same"}, {"group"})
_TRUE = {"1", "true", "yes", "same", "genuine", "y", "t"}
_FALSE = {"0", "false", "no", "different", "impostor", "n", "f"}


def _parse_same(v: str, where: str) -> bool:
    s = v.strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise DataError(f"{where}: 'same' must be 1/0, true/false or yes/no, got {v!r}")


def _is_header(row: list[str], base: Path) -> bool:
    """The first content row is a header when it names the path column, or when it holds a known column
    name and its first two fields do not look like image paths."""
    from .folders import IMAGE_EXTS

    low = [c.lower() for c in row]
    if low[0] in _COLUMN_NAMES[0]:
        return True
    if not any(c in names for c in low[:4] for names in _COLUMN_NAMES):
        return False

    def looks_like_path(c: str) -> bool:
        return Path(c).suffix.lower() in IMAGE_EXTS or "/" in c or "\\" in c or \
            path_exists(Path(c) if Path(c).is_absolute() else base / c)

    return not any(looks_like_path(c) for c in row[:2] if c)


def _check_header(row: list[str], where: str) -> None:
    for pos, cell in enumerate(c.lower() for c in row[:4]):
        for want, names in enumerate(_STRICT_NAMES):
            if cell in names and want != pos:
                raise DataError(f"{where}: header column {pos + 1} is {row[pos]!r}, but qfair reads the columns by "
                                f"position as path1,path2,same[,group[,id1,id2]] ({row[pos]!r} belongs in column "
                                f"{want + 1}). Reorder the columns of the file.")


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
    # the delimiter is decided by the first line that is not blank or a '#' comment (a comment or blank
    # first line of a tab-separated file used to make it read as comma-separated)
    content = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    delim = "\t" if (path.suffix.lower() == ".tsv" or "\t" in content) else ","
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
    first = True
    group_lines = {True: 0, False: 0}  # first line with / without a group
    for lineno, row in enumerate(rows, 1):
        where = f"{path}:{lineno}"
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        row = [c.strip() for c in row]
        if first:
            first = False
            if _is_header(row, base):
                _check_header(row, where)
                continue
        if len(row) not in (3, 4, 6):
            raise DataError(f"{where}: expected 3 or 4 fields (path1,path2,same[,group]) or 6 (...,id1,id2), "
                            f"got {len(row)}: {','.join(row)[:80]!r}")
        same = _parse_same(row[2], where)
        if has_ids is None:
            has_ids = len(row) == 6
        elif has_ids != (len(row) == 6):
            raise DataError(f"{where}: identity columns id1,id2 must be given on every line or on none")
        group = row[3] if len(row) >= 4 else ""
        group_lines[bool(group)] = group_lines[bool(group)] or lineno
        if all(group_lines.values()):  # pairs without a group would silently form a group "all"
            other = group_lines[not group]
            raise DataError(f"{where}: {'a' if group else 'no'} group on this line but {'none' if group else 'one'} "
                            f"on line {other}: give a group on every line or on none")
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
        groups.append(group or "all")
        if has_ids:
            ids.append((row[4], row[5]))
    if not pairs:
        raise DataError(f"{path}: no pairs" + (f" ({skipped} skipped for missing images)" if skipped else ""))
    loader = partial(_decode_loader, source=str(path))  # a partial of a module function: workers can pickle it
    vset = VerificationSet(name=name or path.stem, images=LazyImageStore(sources, sources, loader), pairs=pairs,
                           issame=issame, groups=np.asarray(groups), pair_ids=ids if has_ids else None,
                           meta={"source": str(path), "format": "csv", "skipped_pairs": skipped})
    return finish_validated(vset, skip_corrupt) if validate else vset
