"""insightface / MXNet RecordIO (``train.rec`` + ``train.idx``) read without mxnet (README references [4]).

Record layout: uint32 magic 0xced7230a, uint32 ``lrec`` (top 3 bits continuation flag, low 29 bits
length), payload, zero padding to 4 bytes. A payload holding the magic at a 4-byte-aligned position is
split by the writer into parts (flag 1 = first, 2 = middle, 3 = last) and the reader joins them with
the magic in between. Payload = header ``struct IfQQ`` (flag, label, id, id2; 24 bytes), then ``flag``
float32 labels if flag > 0, then the encoded image. Record 0 of an insightface set is a header: a label
array (flag > 0) and no image, label[0] = one past the last image key, so images are keys 1 .. label[0] - 1
(label[1], when larger, ends the per-identity records label[0] .. label[1] - 1 that follow the images).
A record 0 that holds an image (e.g. ``im2rec --pack-label``, keys from 0) is an image like any other.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
_MAX_LEN = (1 << 29) - 1


def _decode_lrec(lrec: int) -> tuple[int, int]:
    return lrec >> 29, lrec & _MAX_LEN


def read_record_at(f: Any, offset: int, file_size: int, where: str) -> bytes:
    """Read the (possibly multi-part) record starting at ``offset`` of the open binary file ``f``."""
    out = bytearray()
    pos = offset
    for _ in range(1 << 16):  # a record cannot have more parts than this; guards against loops
        if pos + 8 > file_size:
            raise DataError(f"{where}: record at byte {offset} is truncated (file ends at {file_size}); "
                            f"the .rec file is incomplete, download or copy it again")
        f.seek(pos)
        magic, lrec = struct.unpack("<II", f.read(8))
        if magic != MAGIC:
            raise DataError(f"{where}: no RecordIO record at byte {pos} (bad magic 0x{magic:08x}); "
                            f"the .idx does not match the .rec, or the file is corrupt")
        cflag, length = _decode_lrec(lrec)
        if pos == offset and cflag in (2, 3):
            raise DataError(f"{where}: byte {offset} is the middle or last part of a multi-part record "
                            f"(continuation flag {cflag}), not the start of one: the .idx does not match the .rec. "
                            f"Delete the .idx and qfair rebuilds the index by scanning the .rec")
        if pos != offset and cflag not in (2, 3):
            raise DataError(f"{where}: the multi-part record at byte {offset} is cut short (byte {pos} starts a new "
                            f"record, continuation flag {cflag}); the .rec file is corrupt")
        padded = (length + 3) & ~3
        if pos + 8 + padded > file_size and pos + 8 + length > file_size:
            raise DataError(f"{where}: record at byte {offset} needs {length} bytes but the file ends at "
                            f"{file_size}; the .rec file is truncated")
        out += f.read(length)
        pos += 8 + padded
        if cflag in (0, 3):
            return bytes(out)
        out += _MAGIC_BYTES
    raise DataError(f"{where}: record at byte {offset} has too many parts")


def unpack(payload: bytes, where: str = "record") -> tuple[np.ndarray, int, int, bytes]:
    """Payload -> (labels float32 (k,), id, id2, image bytes)."""
    if len(payload) < _HEADER.size:
        raise DataError(f"{where}: payload of {len(payload)} bytes is shorter than the 24-byte header")
    flag, label, id1, id2 = _HEADER.unpack_from(payload)
    body = payload[_HEADER.size:]
    if flag > 0:
        if 4 * flag > len(body):
            raise DataError(f"{where}: header announces {flag} labels but the record is too short")
        labels = np.frombuffer(body[:4 * flag], dtype="<f4").copy()
        body = body[4 * flag:]
    else:
        labels = np.array([label], dtype=np.float32)
    return labels, id1, id2, body


def pack(labels: float | Sequence[float], image: bytes, id1: int = 0, id2: int = 0) -> bytes:
    """Inverse of :func:`unpack` (mxnet.recordio.pack layout)."""
    if np.isscalar(labels):
        return _HEADER.pack(0, float(labels), id1, id2) + image
    arr = np.asarray(labels, dtype="<f4")
    return _HEADER.pack(len(arr), 0.0, id1, id2) + arr.tobytes() + image


def encode_record(payload: bytes) -> bytes:
    """One RecordIO record (with dmlc's magic escaping into parts, and padding)."""
    if len(payload) > _MAX_LEN:
        raise DataError("record too large for RecordIO (>= 512 MiB)")
    out = bytearray()
    start = 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            out += struct.pack("<II", MAGIC, ((1 if start == 0 else 2) << 29) | (i - start)) + payload[start:i]
            start = i + 4
    rest = len(payload) - start
    out += struct.pack("<II", MAGIC, ((3 if start else 0) << 29) | rest) + payload[start:]
    out += b"\0" * (((rest + 3) & ~3) - rest)
    return bytes(out)


def write_recordio(rec_path: str | Path, items: Sequence[tuple[Any, float]], *, idx_path: str | Path | None = None,
                   fmt: str = "jpeg", header_record: bool = True) -> tuple[Path, Path]:
    """Write ``items`` of (image uint8 HWC array or encoded bytes, label) as an insightface ``.rec`` + ``.idx``.

    With ``header_record`` key 0 is the insightface header record (label[0] = one past the last key).

    Both files are written in full to temporary files beside them first; then an older ``.idx`` is
    removed, the ``.rec`` renamed into place, and the ``.idx`` last. An interrupted write thus leaves the
    old pair, or a ``.rec`` without ``.idx`` (which :class:`RecordIO` indexes by scanning), never a new
    ``.rec`` beside an old ``.idx`` whose offsets point into the wrong records.
    """
    from ..utils.io import atomic_path, output_file
    from .preprocess import encode_jpeg, encode_png

    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path else rec_path.with_suffix(".idx")
    enc = encode_png if fmt == "png" else encode_jpeg
    blob, lines = bytearray(), []
    first = 1 if header_record else 0
    if header_record:
        lines.append(f"0\t{len(blob)}")
        blob += encode_record(pack([len(items) + 1, len(items) + 1], b""))
    for k, (img, label) in enumerate(items, start=first):
        data = bytes(img) if isinstance(img, (bytes, bytearray)) else enc(np.asarray(img))
        lines.append(f"{k}\t{len(blob)}")
        blob += encode_record(pack(float(label), data, id1=k))
    with atomic_path(idx_path) as idx_tmp:
        idx_tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with atomic_path(rec_path) as rec_tmp:
            rec_tmp.write_bytes(bytes(blob))
            output_file(idx_path).unlink(missing_ok=True)  # until the new .idx is in place: none, not the old
    return rec_path, idx_path


_IDX_CHUNK = 1 << 24  # bytes of .idx text parsed at a time by the fast path
_KEY_LIMIT = 1 << 63  # keys and offsets are stored as int64


def _read_idx(idx_path: Path, file_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) int64 from ``key<TAB>offset`` lines. Fast path (MS1MV2 has 5.8M lines): the text is
    parsed by numpy in 16 MiB chunks, so memory stays near the size of the two result arrays; on any
    irregularity (not two integers on every line, blank lines, an offset past the end) the line-by-line
    parser takes over and names the offending file:line."""
    import warnings

    parts: list[np.ndarray] = []
    try:
        with open(idx_path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("error")  # older numpy only warns (DeprecationWarning) on unparsable text
            rest = b""
            while True:
                block = f.read(_IDX_CHUNK)
                buf = rest + block
                cut = buf.rfind(b"\n") + 1 if block else len(buf)
                chunk, rest = buf[:cut], buf[cut:]
                if chunk:
                    lines = chunk.count(b"\n") + (not chunk.endswith(b"\n"))
                    arr = np.fromstring(chunk.decode("ascii"), dtype=np.int64, sep=" ")
                    if arr.size != 2 * lines:
                        raise ValueError("not two integers per line")
                    parts.append(arr)
                if not block:
                    break
    except (ValueError, UnicodeError, DeprecationWarning):
        return _read_idx_lines(idx_path, file_size)
    arr = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    keys, offsets = arr[0::2], arr[1::2]
    # numpy clamps numbers beyond int64 to its limits: a value at a limit may not be what the file says, so
    # the line parser (exact Python integers) decides; file_size - 8 is compared, not max + 8 (no overflow)
    lim = np.iinfo(np.int64)
    if not arr.size or keys.min() < 0 or offsets.min() < 0 or offsets.max() > file_size - 8 \
            or keys.max() == lim.max:
        return _read_idx_lines(idx_path, file_size)
    return keys, offsets


def _read_idx_lines(idx_path: Path, file_size: int) -> tuple[np.ndarray, np.ndarray]:
    keys, offsets = [], []
    with open(idx_path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {line.strip()[:60]!r}")
            try:
                key, off = int(parts[0]), int(parts[1])
            except ValueError:
                raise DataError(f"{idx_path}:{lineno}: key and offset must be integers, got {line.strip()[:60]!r}") \
                    from None
            if not 0 <= key < _KEY_LIMIT:
                raise DataError(f"{idx_path}:{lineno}: key {parts[0][:30]} is outside 0 .. 2**63-1; the .idx is "
                                f"corrupt or belongs to another file: delete it and qfair rebuilds the index by "
                                f"scanning the .rec")
            if off < 0:
                raise DataError(f"{idx_path}:{lineno}: offset {parts[1][:30]} of key {key} is negative; the .idx is "
                                f"corrupt: delete it and qfair rebuilds the index by scanning the .rec")
            if off > file_size - 8:
                raise DataError(f"{idx_path}:{lineno}: offset {parts[1][:30]} of key {key} is past the end of the "
                                f".rec ({file_size} bytes); the .rec is truncated or the .idx belongs to another file")
            keys.append(key)
            offsets.append(off)
    if not keys:
        raise DataError(f"{idx_path}: empty .idx file")
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


def _scan(rec_path: Path, file_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Build the index by walking the record headers (no .idx available)."""
    offsets = []
    with open(rec_path, "rb") as f:
        pos = 0
        start = True
        while pos + 8 <= file_size:
            f.seek(pos)
            magic, lrec = struct.unpack("<II", f.read(8))
            if magic != MAGIC:
                raise DataError(f"{rec_path}: no RecordIO record at byte {pos}; the file is corrupt")
            cflag, length = _decode_lrec(lrec)
            if start:
                offsets.append(pos)
            start = cflag in (0, 3)
            pos += 8 + ((length + 3) & ~3)
        if pos != file_size:
            raise DataError(f"{rec_path}: the last record is truncated (file ends at byte {file_size})")
    if not offsets:
        raise DataError(f"{rec_path}: no records")
    return np.arange(len(offsets), dtype=np.int64), np.asarray(offsets, dtype=np.int64)


class RecordIO:
    """Dataset of ``(image uint8 (112, 112, 3), label int)`` from an insightface ``.rec``.

    ``path`` is the ``.rec`` file or a folder holding ``train.rec``; the ``.idx`` beside it is used when
    present (otherwise the file is scanned once). The file is opened lazily in each process, so the
    dataset works with DataLoader workers and memory stays bounded by the batch.
    """

    def __init__(self, path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            p = p / "train.rec"
        if not p.is_file():
            raise DataError(f"{p}: RecordIO file not found (expected a .rec file or a folder with train.rec)")
        self.rec_path = p
        self.file_size = p.stat().st_size
        self._fh: Any = None
        self._pid = -1
        idx = Path(idx_path) if idx_path else p.with_suffix(".idx")
        keys, offsets = _read_idx(idx, self.file_size) if idx.is_file() else _scan(p, self.file_size)
        # sorted arrays, not a dict: 5.8M keys cost 90 MB instead of ~600 MB, shared by forked workers
        order = np.argsort(keys, kind="stable")
        self._sorted_keys, self._sorted_offsets = keys[order], offsets[order]
        dup = np.flatnonzero(self._sorted_keys[1:] == self._sorted_keys[:-1])
        if dup.size:
            k = int(self._sorted_keys[dup[0]])
            where = np.flatnonzero(keys == k)[:2] + 1
            raise DataError(f"{idx}: key {k} is listed twice (entries {where[0]} and {where[1]}, offsets "
                            f"{int(offsets[where[0] - 1])} and {int(offsets[where[1] - 1])}; {dup.size} duplicate "
                            f"key(s) in all): the .idx is corrupt or two indexes were concatenated; delete it "
                            f"and qfair will rebuild the index by scanning {p.name}")
        self.keys = keys
        self.header_labels: np.ndarray | None = None
        if self._has(0):
            self._use_header_record(p)
        if len(self.keys) == 0:
            raise DataError(f"{p}: no image records")

    def _use_header_record(self, p: Path) -> None:
        """Key 0 as the insightface header record: a label array (flag > 0) AND no image, label[0] = one past
        the last image key. A key 0 holding an image (``im2rec --pack-label`` numbers images from 0, with
        label arrays) is an ordinary image; an empty key 0 that is no valid header is an error."""
        payload = self._read_key(0)
        labels, _, _, body = unpack(payload, f"{p} key 0")
        if len(body):
            return  # an image: every key is an image
        flag = _HEADER.unpack_from(payload)[0]
        if flag == 0 or not np.isfinite(labels[0]) or not 1 <= labels[0] < 2**40:
            raise DataError(f"{p} key 0: record 0 holds no image, but it is not an insightface header record "
                            f"either (that needs a label array whose first label is one past the last image key; "
                            f"it has {'a single label' if flag == 0 else 'labels'} {labels[:2].tolist()}). "
                            f"Rewrite the .rec, or remove key 0 from the .idx to read every other record as an "
                            f"image")
        self.header_labels = labels
        last = int(labels[0])
        if last - 1 > len(self._sorted_keys):
            raise DataError(f"{p}: header record announces images 1..{last - 1} but the index has only "
                            f"{len(self._sorted_keys)} records; the .idx or .rec is incomplete")
        wanted = np.arange(1, last, dtype=np.int64)
        present = np.isin(wanted, self._sorted_keys)
        if not present.all():
            raise DataError(f"{p}: header record announces images 1..{last - 1} but the index lacks "
                            f"{int((~present).sum())} of them (first missing key {int(wanted[~present][0])})")
        self.keys = wanted
        # insightface puts one record per identity after the images: keys label[0] .. label[1] - 1
        end = last
        if len(labels) >= 2 and np.isfinite(labels[1]) and last <= labels[1] < 2**40:
            end = int(labels[1])
        extra = self._sorted_keys[self._sorted_keys >= end]
        if extra.size:
            import warnings

            ids = f", identity records {last}..{end - 1}" if end > last else ""
            warnings.warn(f"{p}: the index holds {extra.size} record(s) with keys outside the range its header record "
                          f"announces (images 1..{last - 1}{ids}), first key {int(extra[0])}; they are not read. "
                          f"If they are images, the header record's first label is wrong: rewrite the .rec "
                          f"(qfair.data.write_recordio) so it counts every image", stacklevel=3)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fh"], state["_pid"] = None, -1
        return state

    def _file(self):
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.rec_path, "rb")  # noqa: SIM115 - kept open across reads, closed by close()
            self._pid = os.getpid()
        return self._fh

    def _has(self, key: int) -> bool:
        i = int(np.searchsorted(self._sorted_keys, key))
        return i < len(self._sorted_keys) and int(self._sorted_keys[i]) == key

    def _read_key(self, key: int) -> bytes:
        if not self._has(key):
            raise DataError(f"{self.rec_path}: no record with key {key}")
        offset = int(self._sorted_offsets[np.searchsorted(self._sorted_keys, key)])
        return read_record_at(self._file(), offset, self.file_size, f"{self.rec_path} key {key}")

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, i: int) -> tuple[bytes, int]:
        """(encoded image bytes, label) of the i-th image (no decoding)."""
        key = int(self.keys[i])
        labels, _, _, body = unpack(self._read_key(key), f"{self.rec_path} key {key}")
        if not np.isfinite(labels[0]):
            raise DataError(f"{self.rec_path} key {key}: label is not a finite number")
        return body, int(labels[0])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from .preprocess import decode_image

        body, label = self.read(i)
        return decode_image(body, name=f"{self.rec_path} key {int(self.keys[i])}"), label

    def labels(self) -> np.ndarray:
        """Label of every image (reads the headers of all records; no image decoding)."""
        return np.asarray([self.read(i)[1] for i in range(len(self))], dtype=np.int64)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
