"""Run directories: one folder per command that produces something (../DESIGN.md "A run directory").

``RunDir.create(path, config, command=...)`` makes the folder and writes ``config.yaml`` with the fully
resolved config, the seed, the command and package versions. Artefacts are written atomically via
``qfair.utils.io``. ``run.stage_done(name)`` / ``run.mark_done(name)`` let long jobs resume by stage.
"""
from __future__ import annotations

import datetime as _dt
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .utils.errors import QfairError
from .utils.io import atomic_write_json, atomic_write_text


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape results (without importing the heavy ones needlessly)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("qfair", "torch", "numpy", "onnx", "onnxruntime", "triton", "tensorrt", "pyyaml", "rich"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def dump_yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


@dataclass
class RunDir:
    """A run folder; ``path`` exists once created."""

    path: Path

    @classmethod
    def create(cls, path: str | Path, config: Any = None, *, command: str = "", seed: int | None = None,
               extra: dict[str, Any] | None = None) -> "RunDir":
        from .config import config_to_dict

        path = Path(path)
        if path.exists() and not path.is_dir():
            raise QfairError(f"output path {path} exists and is not a folder; choose another --out")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QfairError(f"cannot create run folder {path}: {exc}. Choose another --out.") from None
        run = cls(path)
        if config is not None:
            cfg = config_to_dict(config)  # dataclasses anywhere inside become plain dicts
            if seed is None:
                seed = cfg.get("seed") if isinstance(cfg, dict) else None
            doc = {
                "command": command or " ".join(["qfair", *sys.argv[1:]]),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "seed": seed,
                "config": cfg,
                "versions": package_versions(),
            }
            if extra:
                doc.update(extra)
            atomic_write_text(path / "config.yaml", dump_yaml(doc))
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        if not path.is_dir():
            raise QfairError(f"run folder not found: {path}. Pass a folder written by a qfair command.")
        return cls(path)

    def read_config(self) -> dict[str, Any]:
        import yaml

        p = self.path / "config.yaml"
        if not p.exists():
            return {}
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.path / name, obj)

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path / name, text)

    # Resumable stages: a marker file is written only after a stage finished.
    def stage_done(self, name: str) -> bool:
        return (self.path / ".stages" / f"{name}.done").exists()

    def mark_done(self, name: str, info: Any = None) -> None:
        (self.path / ".stages").mkdir(exist_ok=True)
        atomic_write_json(self.path / ".stages" / f"{name}.done", info if info is not None else {})
