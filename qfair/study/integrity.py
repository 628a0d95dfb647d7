"""Whether a finished study stage's files are still complete (checked before a study resumes it).

A stage marker is written only after the stage's files, so a hard kill never leaves a marker without
them; but files can still go missing or be cut short afterwards (deleted to save space, a partial copy,
a machine crash on a file system that reorders writes). Such a stage is rebuilt instead of stopping the
resumed study half-way with an unreadable file.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ..runs import RunDir
from ..utils.errors import QfairError


def stage_damage(folder: Path, kind: str) -> str | None:
    """What is wrong with the files of the finished stage in ``folder`` (None: they look complete)."""
    try:
        RunDir(folder).read_config()
    except QfairError as exc:
        return str(exc)
    why = _artefact_damage(folder, kind)
    record = folder / "config.yaml"
    if why is None and not record.is_file():  # without it the stage's settings cannot be compared with now's
        why = f"{record} is missing (the record of the settings the stage was built with)"
    return why


def _artefact_damage(folder: Path, kind: str) -> str | None:
    """What is wrong with the model files of a finished stage (None: they look complete)."""
    if kind == "onnx":
        graph, report = folder / "model.onnx", folder / "model.export.json"
        if not graph.is_file():
            return f"{graph} is missing"
        try:
            size = json.loads(report.read_text(encoding="utf-8")).get("bytes")
        except (OSError, ValueError, AttributeError):
            return f"{report} is missing or unreadable"
        if size is not None and graph.stat().st_size != size:
            return f"{graph} has {graph.stat().st_size} bytes, its export report says {size}: it was cut short"
        return None
    from ..quant.serialize import read_quant_json

    try:
        read_quant_json(folder)
    except QfairError as exc:
        return str(exc)
    weights = folder / "model.pt"
    if not weights.is_file():
        return f"{weights} is missing"
    if weights.stat().st_size == 0:
        return f"{weights} is empty"
    if zipfile.is_zipfile(weights):  # torch.save's format: a cut-short archive has no central directory
        try:
            with zipfile.ZipFile(weights) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile) as exc:
            return f"{weights} is damaged ({exc})"
        if bad is not None:
            return f"{weights} is damaged (record {bad} fails its checksum)"
    else:
        with open(weights, "rb") as f:
            if f.read(1) != b"\x80":  # not a legacy pickle either: a zip cut short before its directory
                return f"{weights} is not a complete checkpoint (cut short or damaged)"
    return None
