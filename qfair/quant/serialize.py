"""Save and reload fake-quant models: ``model.pt`` (state dict) + ``quant.json`` (every quantizer).

``quant.json`` holds the float architecture (registry name + kwargs, from ``model.qfair_arch``), the
resolved QuantConfig, and per quantizer: module name, layer, role, bits, symmetric, axis, qmin/qmax,
observer, mode, scale and zero point. Reloading rebuilds the float model, re-runs ``prepare`` with the
same config (placement and BN folding are structural, so the module tree is identical), loads the
state dict strictly and restores each quantizer's mode: outputs are reproduced exactly. The top-level summary
(recipe, wbits, abits, observers, ptq, calibrated, float_kept, embedding_size) repeats the config and the
quantizers; a file where they disagree (edited, damaged) is refused, not labelled with the wrong bits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import config_from_dict
from ..runs import RunDir
from ..utils.errors import CheckpointError, QuantError
from ..utils.io import atomic_torch_save, atomic_write_json, safe_torch_load
from .config import QuantConfig
from .quantizer import iter_quantizers

FORMAT = "qfair-quant/1"


def quant_summary(model: nn.Module) -> list[dict[str, Any]]:
    """One dict per quantizer (``describe()`` plus its module name)."""
    return [{"name": name, **q.describe()} for name, q in iter_quantizers(model)]


_SAVE_COMMAND = "qfair.save_quantized"


def _config_is_ours(path: Path) -> bool:
    """True when ``path/config.yaml`` is missing, unreadable or written by :func:`save_quantized`."""
    if not (path / "config.yaml").is_file():
        return True
    try:
        return RunDir(path).read_config().get("command") == _SAVE_COMMAND
    except OSError:  # damaged (DamagedRunFileError is an OSError): write a good one
        return True


def save_quantized(model: nn.Module, run_dir: str | Path | RunDir, *, arch: dict[str, Any] | None = None) -> Path:
    """Write ``model.pt``, ``quant.json`` and ``config.yaml`` into ``run_dir``. A ``config.yaml`` that
    another command wrote (``qfair quantize``, qat, a study: the full run settings) is kept; one an
    earlier ``save_quantized`` wrote is replaced, so it describes the model saved now."""
    meta = getattr(model, "qfair_quant", None)
    if meta is None:
        raise QuantError("save_quantized needs a model returned by qfair.quant.prepare / quantize")
    path = run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)
    if _config_is_ours(path):
        RunDir.create(path, meta.get("config", {}), command=_SAVE_COMMAND)
    path.mkdir(parents=True, exist_ok=True)
    arch = arch or getattr(model, "qfair_arch", None)
    atomic_torch_save(model.state_dict(), path / "model.pt")
    doc = {
        "format": FORMAT,
        "arch": arch,
        "embedding_size": getattr(model, "embedding_size", None),
        **{k: v for k, v in meta.items() if k != "config"},
        "config": meta.get("config", {}),
        "quantizers": quant_summary(model),
    }
    atomic_write_json(path / "quant.json", doc)
    return path


def read_quant_json(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir/quant.json``, checked: its layout, and its top-level summary against its ``config`` section and
    quantizer records (:class:`CheckpointError` naming the file and the key otherwise)."""
    doc = _read_quant_json(run_dir)
    _check_summary(doc, Path(run_dir) / "quant.json")
    return doc


def _read_quant_json(run_dir: str | Path) -> dict[str, Any]:
    """``read_quant_json`` less the summary check (``load_quantized`` runs it after the finer quantizer check)."""
    import json

    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise CheckpointError(f"{run_dir} is a file; load_quantized takes the run folder that holds model.pt and "
                              "quant.json (written by qfair.save_quantized / qfair quantize). A float checkpoint "
                              "loads with qfair.load_model(path, arch=...)")
    p = run_dir / "quant.json"
    if not p.exists():
        raise CheckpointError(f"{p} not found: {run_dir} is not a quantized run folder (made by qfair quantize or "
                              "qfair.save_quantized)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{p}: not valid JSON ({exc})") from None
    _check_doc(doc, str(p))
    return doc


def _check_doc(doc: Any, p: str) -> None:
    """A quant.json document (``p`` names it in errors): its format tag and the layout ``load_quantized`` reads."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(f"{p}: unknown format {got!r}, expected {FORMAT!r}")
    _check_layout(doc, p)


_QUANTIZER_KEYS = ("name", "dynamic", "calibrated", "mode")


def _check_layout(doc: dict[str, Any], p: str | Path) -> None:
    """The keys ``load_quantized`` reads, with their types: a hand-edited or cut file is named, not a KeyError."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{p}: {what}; the file was edited or is damaged: save or quantize the model again")

    if not isinstance(doc.get("config"), dict):
        raise bad("'config' (the QuantConfig the model was prepared with) is missing or not a mapping")
    arch = doc.get("arch")
    if arch is not None and not (isinstance(arch, dict) and isinstance(arch.get("name"), str)):
        raise bad(f"'arch' must be a mapping with a 'name' (and 'kwargs'), got {arch!r:.80}")
    quantizers = doc.get("quantizers")
    if not isinstance(quantizers, list):
        raise bad("'quantizers' (one entry per quantizer) is missing or not a list")
    for i, d in enumerate(quantizers):
        missing = [k for k in _QUANTIZER_KEYS if not isinstance(d, dict) or k not in d]
        if missing:
            raise bad(f"quantizers[{i}] lacks {', '.join(missing)}")


def _disagrees(p: str | Path, key: str, value: Any, other: str) -> CheckpointError:
    """``other``: what ``value`` should agree with, and its value (``"config.wbits is 8"``)."""
    return CheckpointError(f"{p}: top-level '{key}' is {value!r} but {other}; this summary must describe the model "
                           "the file rebuilds. The file was edited or is damaged: re-run `qfair quantize` (or "
                           "qfair.save_quantized) to write it again")


def _same_name(value: Any, expected: str, registry: Any) -> bool:
    """``value`` is ``expected`` as the config spells it or as its registry names it (save_quantized writes the
    canonical recipe name); another alias would still label the model differently, so it disagrees."""
    try:
        canonical = registry.canonical(expected)
    except Exception:  # noqa: BLE001 -- config_from_dict validated it; be safe with registries that changed
        canonical = expected
    return value in (expected, canonical)


def _check_summary(doc: dict[str, Any], p: str | Path) -> None:
    """The top-level summary (``recipe``, ``wbits``, ``abits``, ``observer``, ``weight_observer``, ``ptq``,
    ``calibrated``) repeats the ``config`` section and the quantizer records; what reads it (run tables, ``qfair
    info``, the evaluate labels) must not describe another model than the one the config rebuilds."""
    from .observers import OBSERVERS
    from .recipes import RECIPES

    cfg = config_from_dict(QuantConfig, doc["config"], source=str(p))  # as load_quantized reads it
    for key, registry in (("recipe", RECIPES), ("observer", OBSERVERS), ("weight_observer", OBSERVERS)):
        expected = getattr(cfg, key)
        if key in doc and not _same_name(doc[key], expected, registry):
            raise _disagrees(p, key, doc[key], f"config.{key} is {expected!r}")
    for key in ("wbits", "abits"):
        value, expected = doc.get(key), getattr(cfg, key)
        if key in doc and not (isinstance(value, int) and not isinstance(value, bool) and value == expected):
            raise _disagrees(p, key, value, f"config.{key} is {expected!r}")
    if "ptq" in doc and doc["ptq"] != list(cfg.ptq):
        raise _disagrees(p, "ptq", doc["ptq"], f"config.ptq is {list(cfg.ptq)!r}")
    if "calibrated" in doc and not isinstance(doc["calibrated"], bool):
        raise _disagrees(p, "calibrated", doc["calibrated"], "it must be true or false")
    if doc.get("calibrated"):  # quantize() calibrates every quantizer it leaves on
        for d in doc["quantizers"]:
            if d["mode"] != "off" and not d["calibrated"]:
                raise _disagrees(p, "calibrated", True, f"quantizer '{d['name']}' (mode {d['mode']!r}) has "
                                 f"calibrated {d['calibrated']!r}")


def _check_keys(qmodel: nn.Module, sd: dict[str, Any], weights: str) -> None:
    """The state dict (``weights`` names it) must fit the rebuilt model key for key: name what does not (a wrong
    ``model=``, a damaged file)."""
    own = qmodel.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"{weights} does not match the quantized {type(qmodel).__name__} rebuilt from "
                              f"quant.json ({'; '.join(parts)}); pass model= the architecture it was quantized from, "
                              "or leave model out to use the one quant.json names")


# what placement decides and the state dict does not hold: a quant.json that disagrees with the rebuilt
# model (edited, or from another qfair) would otherwise load scales onto the wrong integer grid, silently
_STRUCTURE = ("bits", "symmetric", "narrow", "axis", "qmin", "qmax")


def _check_quantizers(qmodel: nn.Module, doc: dict[str, Any], source: str) -> None:
    by_name = {d.get("name"): d for d in doc.get("quantizers", []) if isinstance(d, dict)}
    names = set()
    for name, q in iter_quantizers(qmodel):
        names.add(name)
        d = by_name.get(name)
        if d is None:
            raise CheckpointError(f"{source} has no entry for quantizer '{name}'")
        mine = q.describe()
        diff = [f"{k} {d.get(k)!r} in quant.json vs {mine[k]!r} from its config" for k in _STRUCTURE
                if k in d and d[k] != mine[k]]
        if diff:
            raise CheckpointError(f"{source}: quantizer '{name}' disagrees with the model its config "
                                  f"rebuilds ({'; '.join(diff)}); the file was edited or is damaged: quantize again")
    extra = sorted(set(by_name) - names)
    if extra:
        raise CheckpointError(f"{source} describes quantizers the rebuilt model does not have: "
                              f"{', '.join(map(str, extra[:4]))}{' ...' if len(extra) > 4 else ''}")


def _check_rebuilt_summary(qmodel: nn.Module, doc: dict[str, Any], source: str) -> None:
    """``float_kept`` and ``embedding_size`` describe the model placement rebuilds: they must match it."""
    import json

    rebuilt = {"float_kept": json.loads(json.dumps(qmodel.qfair_quant.get("float_kept"))),
               "embedding_size": getattr(qmodel, "embedding_size", None)}
    for key, expected in rebuilt.items():
        if key in doc and doc[key] is not None and expected is not None and doc[key] != expected:
            raise _disagrees(source, key, doc[key],
                             f"the model its config rebuilds has {key} {expected!r}")


def load_quantized(run_dir: str | Path | RunDir, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the fake-quant model saved by :func:`save_quantized`.

    ``model``: the float architecture to prepare; by default it is built with
    ``qfair.models.create_model`` from the name and kwargs stored in quant.json.
    """
    path = run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)
    doc = _read_quant_json(path)
    _check_model_arg(model)
    if model is None:
        model = _build_arch(doc, f"{path}/quant.json", "the run cannot be rebuilt from the folder alone")
    sd = safe_torch_load(path / "model.pt")
    return rebuild_quantized(doc, sd, model, source=f"{path}/quant.json", weights=f"{path}/model.pt")


def _check_model_arg(model: Any) -> None:
    if model is not None and not isinstance(model, nn.Module):
        raise CheckpointError(f"load_quantized: model must be the float nn.Module to rebuild (e.g. "
                              f"qfair.create_model(name)), got {type(model).__name__}; leave it out to build the "
                              "architecture quant.json names")


def _build_arch(doc: dict[str, Any], source: str, why: str) -> nn.Module:
    """The float architecture ``doc`` names (``why``: what its absence stops, for the error)."""
    arch = doc.get("arch")
    if not arch:
        raise CheckpointError(f"{source} names no architecture (it was saved from a model qfair did not build), so "
                              f"{why}; re-quantize a model loaded with qfair.load_model / --model, or in Python pass "
                              "the float architecture: load_quantized(run_dir, model=...)")
    from ..models import create_model
    from ..utils.errors import QfairError

    try:
        return create_model(arch["name"], **arch.get("kwargs", {}))
    except (QfairError, TypeError) as exc:
        raise CheckpointError(f"{source}: cannot build its architecture {arch['name']!r} with "
                              f"{arch.get('kwargs', {})}: {exc}. Was it quantized with a newer or patched qfair? "
                              "Re-quantize with this version, or pass model= the float architecture") from None


def rebuild_quantized(doc: dict[str, Any], sd: Any, model: nn.Module | None = None, *,
                      source: str = "quant.json", weights: str = "model.pt") -> nn.Module:
    """The fake-quant model described by a quant.json document ``doc`` with the tensors of its state dict ``sd``,
    in eval mode: what :func:`load_quantized` returns for a run folder holding them, with no files involved (a
    packed ``.qpk`` records both). ``source`` / ``weights`` name the two in errors. ``doc`` is checked as
    load_quantized checks the file (format, layout, summary, quantizer structure); ``model`` as there."""
    from .recipes import prepare

    _check_doc(doc, source)
    _check_model_arg(model)
    if model is None:
        model = _build_arch(doc, source, "the model cannot be rebuilt from it alone")
    cfg = config_from_dict(QuantConfig, doc["config"], source=source)
    qmodel = prepare(model, cfg)
    if not isinstance(sd, dict):
        raise CheckpointError(f"{weights} holds a {type(sd).__name__}, not the state dict save_quantized writes")
    own = qmodel.state_dict()
    for key in sd:  # biases added by bias correction to layers that had none
        mod_name, _, pname = key.rpartition(".")
        if pname == "bias" and key not in own:
            try:
                m = qmodel.get_submodule(mod_name)
            except AttributeError:
                continue  # reported with the other unexpected keys below
            if getattr(m, "bias", 0) is None:
                m.bias = nn.Parameter(torch.zeros_like(sd[key]))
    _check_keys(qmodel, sd, weights)
    _check_quantizers(qmodel, doc, source)  # first: an edited config is named quantizer by quantizer
    _check_summary(doc, source)
    _check_rebuilt_summary(qmodel, doc, source)
    by_name = {d["name"]: d for d in doc["quantizers"]}
    for name, q in iter_quantizers(qmodel):
        if by_name.get(name, {}).get("lsq"):
            q.enable_lsq()
    try:
        qmodel.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not match the quantized architecture: {exc}") from None
    for name, q in iter_quantizers(qmodel):
        d = by_name.get(name)
        if d is None:
            raise CheckpointError(f"{source} has no entry for quantizer '{name}'")
        q.dynamic, q.calibrated = bool(d["dynamic"]), bool(d["calibrated"])
        q.observer_enabled = False
        q.fake_quant_enabled = d["mode"] != "off"
    meta = {k: v for k, v in doc.items() if k not in ("format", "quantizers", "arch", "embedding_size")}
    qmodel.qfair_quant = meta
    qmodel.eval()
    return qmodel
