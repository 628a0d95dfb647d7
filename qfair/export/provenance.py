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
from pathlib import Path
from typing import Any

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


def export_report_path(graph: Path) -> Path:
    """The ``<stem>.export.json`` report that ``qfair export`` writes beside a graph."""
    return graph.with_name(graph.stem + ".export.json")


DERIVED_FILES = ("model.onnx", "model.qpk", "model.engine")  # the default outputs of `qfair export`


def exports_in(folder: Path) -> list[Path]:
    """Files in a run folder that `qfair export` made from its model.pt: the default outputs, every
    ``*.export.json`` report and the graph or engine it describes."""
    found = {folder / n for n in DERIVED_FILES if (folder / n).is_file()}
    for report in folder.glob("*.export.json"):
        stem = report.name[: -len(".export.json")]
        found |= {report, *(p for p in (folder / f"{stem}.onnx", folder / f"{stem}.engine") if p.is_file())}
    return sorted(found)


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
    if now != src["sha256"]:
        raise CheckpointError(
            f"{graph.name} was exported from a different {model.name} ({report.name} records sha256 "
            f"{src['sha256'][:12]}..., {model} is now {now[:12]}...): the run was re-quantized after the export, "
            f"so the graph would be evaluated under the new run's label; run `qfair export {graph.parent}` again "
            f"(with its --target) or evaluate the run with --backend torch")
