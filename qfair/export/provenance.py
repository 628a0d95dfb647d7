"""Which model.pt an exported graph came from.

``qfair export`` records the SHA-256 of the run folder's model.pt in ``<stem>.export.json``
(``source_model``). Re-quantizing into the same folder replaces model.pt; the graph beside it is
then stale, and evaluating it would report the old model's numbers under the new run's label.
``check_export_source`` refuses that. Reports written before the hash was recorded carry no
``source_model`` and are accepted unchecked (they cannot be verified; exporting again records it).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..utils.errors import CheckpointError

MODEL_FILE = "model.pt"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_record(run_dir: Path | None, graph: Path) -> dict[str, Any]:
    """``{"source_model": {"file": "model.pt", "sha256": ...}}`` when ``graph`` is written into the run
    folder it was exported from (the model.pt beside it is its source), else {}."""
    if run_dir is None or not (Path(run_dir) / MODEL_FILE).is_file():
        return {}
    if Path(graph).resolve().parent != Path(run_dir).resolve():
        return {}
    return {"source_model": {"file": MODEL_FILE, "sha256": file_sha256(Path(run_dir) / MODEL_FILE)}}


PACKED_SUFFIX = ".qpk"


def export_report_path(graph: str | Path) -> Path:
    """The report that ``qfair export`` writes beside its output: ``<stem>.export.json`` for a graph or
    engine, ``<name>.export.json`` for a packed checkpoint (``model.qpk.export.json``), so that the
    packed export of a run does not take the report of its ``model.onnx``."""
    graph = Path(graph)
    if graph.suffix.lower() == PACKED_SUFFIX:
        return graph.with_name(graph.name + ".export.json")
    return graph.with_name(graph.stem + ".export.json")


DERIVED_FILES = ("model.onnx", "model.qpk", "model.engine")  # the default outputs of `qfair export`


def exports_in(folder: Path) -> list[Path]:
    """Files in a run folder that `qfair export` made from its model.pt: the default outputs, every
    ``*.export.json`` report and the graph or engine it describes."""
    found = {folder / n for n in DERIVED_FILES if (folder / n).is_file()}
    for report in folder.glob("*.export.json"):
        stem = report.name[: -len(".export.json")]
        described = [folder / stem] if stem.lower().endswith(PACKED_SUFFIX) else \
            [folder / f"{stem}.onnx", folder / f"{stem}.engine"]
        found |= {report, *(p for p in described if p.is_file())}
    return sorted(found)


@contextmanager
def _hold_interrupt() -> Iterator[Callable[[], None]]:
    """Yields ``hold()``: from that call to the end of the block a Ctrl-C (SIGINT) is held back and handed
    to the previous handler when the block ends (KeyboardInterrupt by default). Does nothing outside the
    main thread or where SIGINT is ignored or not handled by Python."""
    held: list[int] = []
    old: list[Any] = []

    def hold() -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        current = signal.getsignal(signal.SIGINT)
        if not callable(current):  # SIG_IGN / SIG_DFL / None: leave the process's choice alone
            return
        try:
            old.append(signal.signal(signal.SIGINT, lambda sig, frame: held.append(sig)))
        except ValueError:  # pragma: no cover - not the main interpreter
            pass

    try:
        yield hold
    finally:
        if old:
            signal.signal(signal.SIGINT, old[0])
            if held:
                old[0](held[0], None)  # the default handler raises KeyboardInterrupt here


def write_with_report(path: str | Path, write: Callable[[Path], None],
                      report: Callable[[int], dict[str, Any]]) -> Path:
    """Write an export and its ``.export.json`` report as one step: ``write(tmp)`` writes the file to a
    temporary path beside ``path``, ``report(nbytes)`` returns the report's contents.

    Both are written completely before either replaces anything, and a Ctrl-C during the two renames is
    held until both are done: after an error or Ctrl-C either both files are new or both are as before.
    The old report is removed just before the renames, so even a hard kill between them leaves the new
    file without a report (read as "not made by qfair"), never beside a report of another export."""
    from ..utils.io import atomic_path, to_json

    path, rep = Path(path), export_report_path(Path(path))
    with _hold_interrupt() as hold:
        with atomic_path(rep) as tmp_rep, atomic_path(path) as tmp:  # exits rename the file, then the report
            write(tmp)
            tmp_rep.write_text(to_json(report(tmp.stat().st_size)), encoding="utf-8")
            hold()
            Path(os.path.realpath(rep)).unlink(missing_ok=True)  # through a symlink, as atomic_path writes
    return path


def check_export_source(graph: str | Path) -> None:
    """Raise CheckpointError when ``graph`` was exported from another model.pt than the one beside it.

    Nothing to check (passes): no report beside the graph (a graph not made by qfair), a report
    without ``source_model`` (older qfair), or no model.pt beside the graph."""
    graph = Path(graph)
    report = export_report_path(graph)
    try:
        doc = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
    except (OSError, ValueError):
        return
    src = doc.get("source_model") if isinstance(doc, dict) else None
    if not isinstance(src, dict) or not isinstance(src.get("sha256"), str):
        return
    model = graph.parent / str(src.get("file") or MODEL_FILE)
    if not model.is_file():
        return
    now = file_sha256(model)
    packed = graph.suffix.lower() == ".qpk"
    what, again = ("packed model", "--format packed") if packed else ("graph", "with its --target")
    if now != src["sha256"]:
        raise CheckpointError(
            f"{graph.name} was exported from a different {model.name} ({report.name} records sha256 "
            f"{src['sha256'][:12]}..., {model} is now {now[:12]}...): the run was re-quantized after the export, "
            f"so the {what} would be evaluated under the new run's label; run `qfair export {graph.parent}` again "
            f"({again}) or evaluate the run itself with --backend torch")
