"""Where every image comes from: real sources (image folders, RecordIO, ``.bin``, RFW, pairs CSV),
synthetic sources (generated folders, data-free synthesis from BatchNorm statistics), mixing with
group-balanced identity sampling, the built-in synthetic benchmark, and the one preprocessing convention.

``import qfair.data`` is cheap (numpy only); torch and Pillow are imported when a feature needs them.
"""
from __future__ import annotations

from qfair.utils.lazy import lazy_exports

# public name -> "module:attribute" (resolved on first use)
_LAZY = {
    "to_model_input": "qfair.data.preprocess:to_model_input",
    "from_model_input": "qfair.data.preprocess:from_model_input",
    "flip": "qfair.data.preprocess:flip",
    "decode_image": "qfair.data.preprocess:decode_image",
    "ImageStore": "qfair.data.verification:ImageStore",
    "LazyImageStore": "qfair.data.verification:LazyImageStore",
    "VerificationSet": "qfair.data.verification:VerificationSet",
    "BENCHMARKS": "qfair.data.verification:BENCHMARKS",
    "open_benchmark": "qfair.data.verification:open_benchmark",
    "make_folds": "qfair.data.verification:make_folds",
    "read_bin": "qfair.data.binfile:read_bin",
    "write_bin": "qfair.data.binfile:write_bin",
    "read_rfw": "qfair.data.rfw:read_rfw",
    "read_pairs_csv": "qfair.data.pairs_csv:read_pairs_csv",
    "RecordIO": "qfair.data.recordio:RecordIO",
    "write_recordio": "qfair.data.recordio:write_recordio",
    "ImageFolder": "qfair.data.folders:ImageFolder",
    "FlatFolder": "qfair.data.folders:FlatFolder",
    "calibration_batches": "qfair.data.calibration:calibration_batches",
    "synthesize_from_bn": "qfair.data.synthesis:synthesize_from_bn",
    "MixedSource": "qfair.data.mixing:MixedSource",
    "balanced_identity_sample": "qfair.data.mixing:balanced_identity_sample",
    "write_contact_sheet": "qfair.data.sheet:write_contact_sheet",
    "GroupClassifier": "qfair.data.groups:GroupClassifier",
}

_SUBMODULES = ("builtin", "preprocess", "verification", "binfile", "rfw", "pairs_csv", "recordio", "folders",
               "calibration", "synthesis", "mixing", "sheet", "groups", "align")

__all__ = [*_LAZY]  # noqa: PLE0604 - the keys of _LAZY are strings


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, _SUBMODULES)
