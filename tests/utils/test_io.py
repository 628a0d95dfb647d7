"""Atomic writes refuse output paths that are not regular files and write through symlinks; safe loads
say what a file is when it is not a checkpoint and never relay torch's advice to disable the check."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from qfair.utils.errors import QfairError
from qfair.utils.io import atomic_write_bytes, output_file, output_folder, safe_torch_load


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_directory_target_is_a_clear_error(tmp_path):
    target = tmp_path / "outdir"
    target.mkdir()
    with pytest.raises(QfairError, match=r"outdir: it is a directory, not a regular file"):
        atomic_write_bytes(target, b"data")
    assert target.is_dir() and not _leftovers(tmp_path)


def test_symlink_target_is_written_through(tmp_path):
    real = tmp_path / "real.qpk"
    real.write_bytes(b"old")
    link = tmp_path / "link.qpk"
    link.symlink_to(real.name)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert not _leftovers(tmp_path)
    assert output_file(link) == real.resolve()


def test_symlink_to_a_directory_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    link = tmp_path / "link"
    link.symlink_to("d")
    with pytest.raises(QfairError, match="is a directory"):
        atomic_write_bytes(link, b"x")
    assert link.is_symlink()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_fifo_target_is_refused(tmp_path):
    fifo = tmp_path / "pipe.qpk"
    os.mkfifo(fifo)
    with pytest.raises(QfairError, match=r"pipe.qpk: it is a named pipe \(fifo\)"):
        atomic_write_bytes(fifo, b"x")
    assert not fifo.is_file() and fifo.exists() and not _leftovers(tmp_path)


def test_output_folder_refuses_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me")
    with pytest.raises(QfairError, match="afile: it exists and is not a folder"):
        output_folder(f, create=False)
    with pytest.raises(QfairError, match="afile exists and is not a folder"):
        output_folder(f / "sub")
    assert f.read_text() == "keep me"
    assert not (tmp_path / "new").exists() and output_folder(tmp_path / "new", create=False) == tmp_path / "new"


def _no_torch_advice(msg: str) -> None:
    for bad in ("weights_only", "Re-running", "miniz", "file a bug", "add_safe_globals"):
        assert bad not in msg, msg


def test_text_file_is_not_a_checkpoint(tmp_path):
    p = tmp_path / "text.pt"
    p.write_text("hello\n")
    with pytest.raises(QfairError, match="text.pt is not a PyTorch checkpoint.*neither a zip archive nor a pickle"):
        safe_torch_load(p)


def _tiny_onnx(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save_model(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("name", ["model.onnx", "model.bin"])
def test_onnx_graph_is_named_as_such(tmp_path, name):
    p = _tiny_onnx(tmp_path / name)
    with pytest.raises(QfairError, match=r"is an ONNX graph, not a PyTorch checkpoint.*--backend onnxruntime") as exc:
        safe_torch_load(p)
    assert "refused" not in str(exc.value)


def test_corrupt_zip_gives_the_short_cause(tmp_path):
    p = tmp_path / "c.pt"
    torch.save({"w": torch.zeros(1000)}, p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(QfairError, match="not a readable torch checkpoint.*failed finding central directory") as exc:
        safe_torch_load(p)
    _no_torch_advice(str(exc.value))


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("fmt", ["zip", "pickle"])
def test_code_in_a_checkpoint_is_refused_without_torch_advice(tmp_path, fmt):
    p = tmp_path / "evil.pt"
    if fmt == "zip":
        torch.save({"x": _Evil()}, p)
    else:
        p.write_bytes(pickle.dumps({"x": _Evil()}, protocol=2))
    with pytest.raises(QfairError, match="refused to load.*must not be able to run code.*Cause: ") as exc:
        safe_torch_load(p)
    _no_torch_advice(str(exc.value))


def test_empty_file(tmp_path):
    p = tmp_path / "e.pt"
    p.write_bytes(b"")
    with pytest.raises(QfairError, match="e.pt is empty"):
        safe_torch_load(p)


def test_torch_save_gives_the_same_bytes_for_the_same_tensors(tmp_path):
    """torch names a zip checkpoint's records after the file it writes; through the random temporary name
    every save of the same weights gave other bytes (a resumed and a fresh run's model.pt differed)."""
    from qfair.utils.io import atomic_torch_save

    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    atomic_torch_save(sd, tmp_path / "a.pt")
    atomic_torch_save(sd, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(safe_torch_load(tmp_path / "a.pt")["w"], sd["w"])


def test_data_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    """A rename published before the data is on disk can leave an empty file after a machine crash, while
    a marker written later says the stage is finished: every atomic write flushes its file first."""
    import qfair.utils.io as io
    from qfair.utils.io import atomic_torch_save

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync")
        return real_fsync(fd)

    def replace(src, dst):
        events.append(f"replace {os.path.basename(dst)}")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "model.pt")
    assert events[:2] == ["fsync", "replace model.pt"]


def test_remove_stale_temps_removes_only_atomic_write_temporaries(tmp_path):
    from qfair.utils.io import atomic_path, is_stale_temp, remove_stale_temps

    with atomic_path(tmp_path / "model.pt") as tmp:  # the pattern is the one real atomic writes use
        assert is_stale_temp(tmp)
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / ".model.pt.x1y2z3_w.tmp"
    stale.write_bytes(b"killed mid-write")
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden.tmp", tmp_path / ".a.short.tmp", tmp_path / "model.pt"]
    for p in kept:
        p.write_bytes(b"user file")
    assert not is_stale_temp(tmp_path / "notes.tmp")
    assert remove_stale_temps(tmp_path) == []  # only the folders named, not below them
    assert remove_stale_temps(tmp_path, tmp_path / "sub", tmp_path / "missing") == [stale]
    assert not stale.exists() and all(p.exists() for p in kept)


def test_rewriting_a_file_keeps_its_permissions(tmp_path):
    """A private (0600) file stays private when rewritten, as open(path, "w") would leave it; a new file gets
    0666 less the umask."""
    private = tmp_path / "private.bin"
    private.write_bytes(b"old")
    os.chmod(private, 0o600)
    atomic_write_bytes(private, b"new")
    assert private.read_bytes() == b"new" and (os.stat(private).st_mode & 0o777) == 0o600
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "new.bin", b"x")
    finally:
        os.umask(umask)
    assert (os.stat(tmp_path / "new.bin").st_mode & 0o777) == 0o644
