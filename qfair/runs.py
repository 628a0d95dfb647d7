"""Run directories: one folder per command that produces something (../DESIGN.md "A run directory").

``RunDir.create(path, config, command=...)`` makes the folder and writes ``config.yaml`` with the fully
resolved config, the seed, the command and package versions. Artefacts are written atomically via
``qfair.utils.io``. ``run.stage_done(name)`` / ``run.mark_done(name)`` let long jobs resume by stage;
``with run.lock():`` keeps a second process out of the folder while one writes it.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .utils.errors import QfairError
from .utils.io import atomic_write_json, atomic_write_text, output_folder


class DamagedRunFileError(QfairError, OSError):
    """A file of a run folder cannot be read back (cut short or damaged). An OSError too, so callers that
    treat an unreadable file as "unknown" keep doing so."""


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
        """The run's ``config.yaml`` ({} when it has none); :class:`DamagedRunFileError` naming the file when
        it cannot be read back."""
        from .config.base import read_yaml

        p = self.path / "config.yaml"
        if not p.exists():
            return {}
        try:  # the config files' reader (safe, strict): here a bad file is a damaged run, not a user's typo
            return read_yaml(p)
        except QfairError as exc:
            raise DamagedRunFileError(f"{p}: unreadable ({exc}); it is damaged or was cut short") from None

    def written_by(self) -> str | None:
        """The command recorded in ``config.yaml``: None when there is no such file, it names no command, or it
        cannot be read (a damaged file records no owner to protect)."""
        if not (self.path / "config.yaml").is_file():
            return None
        try:
            doc = self.read_config()
        except OSError:
            return None
        command = doc.get("command") if isinstance(doc, dict) else None
        return str(command) if command else None

    def foreign_command(self, own: str | tuple[str, ...]) -> str | None:
        """The recorded command when one that starts with none of ``own`` wrote ``config.yaml``, else None."""
        command = self.written_by()
        return command if command is not None and not command.startswith(own) else None

    def refuse_foreign(self, own: tuple[str, ...], flag: str = "--out") -> None:
        """QfairError when another command (one whose recorded command starts with none of ``own``) wrote this
        folder's ``config.yaml``: writing here would replace it and leave that run's files described by
        settings that did not make them."""
        command = self.foreign_command(own)
        if command is not None:
            from .utils.errors import ConfigError

            raise ConfigError(f"{flag} {self.path} holds a run of another command ({command.split(' --')[0]!r}: its "
                              "config.yaml describes the files there); writing into it would replace that "
                              f"config.yaml. Pick another {flag}")

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.path / name, obj)

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path / name, text)

    # Resumable stages: a marker file is written only after a stage finished.
    def stage_done(self, name: str) -> bool:
        return (self.path / ".stages" / f"{name}.done").exists()

    def mark_done(self, name: str, info: Any = None) -> None:
        output_folder(self.path / ".stages")
        atomic_write_json(self.path / ".stages" / f"{name}.done", info if info is not None else {})

    @contextmanager
    def lock(self) -> Iterator["RunDir"]:
        """Hold the folder's ``.lock`` for as long as the block runs; QfairError at once when another process
        holds it (two commands writing the same run would redo each other's work and cross their files).
        The operating system drops the lock when its process ends, however it ends; a ``.lock`` file left
        behind is harmless. Without ``fcntl`` (Windows) the block runs unlocked."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield self
            return
        p = self.path / ".lock"
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise QfairError(f"cannot write into run folder {self.path}: {exc.strerror}. Pick another output "
                             "folder.") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                raise QfairError(f"{self.path} is in use by another qfair command ({holder or 'process unknown'}); "
                                 "wait for it to finish, or write to another output folder. Two commands writing "
                                 "the same folder would redo and overwrite each other's work.") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {platform.node()}\n".encode(), 0)
            yield self
        finally:
            os.close(fd)  # closing the descriptor releases the lock
