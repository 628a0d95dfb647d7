"""Loading the scripts in tools/ (not a package) as modules for their tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str, alias: str | None = None) -> ModuleType:
    """tools/<name>.py imported as a fresh module called ``alias`` (default ``tool_<name>``)."""
    spec = importlib.util.spec_from_file_location(alias or f"tool_{name}", TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench_train() -> ModuleType:
    return load_tool("bench_train")


@pytest.fixture(scope="module")
def kd_acceptance() -> ModuleType:
    return load_tool("kd_acceptance")
