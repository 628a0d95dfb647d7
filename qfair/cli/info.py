"""``qfair info MODEL_OR_CHECKPOINT``: architecture, parameters, MACs, embedding size, layers."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a registered architecture or a checkpoint",
                       description="Show architecture, parameters, multiply-accumulates (MACs of convolutions "
                                   "and linear layers) for one 112x112 image, embedding size and layer counts of a "
                                   "registered model name (e.g. r50), a checkpoint file, a quantized run folder or a "
                                   "packed .qpk file (qfair export --format packed).")
    p.add_argument("model", help="registry name (see `qfair models`), checkpoint file (.pt/.pth/.safetensors), "
                                  "quantized run folder or packed .qpk file")
    p.add_argument("--arch", default=None, help="architecture of a checkpoint file (guessed from its keys and "
                                                "shapes if omitted)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import MODELS, create_model, load_model
    from ..models.summary import summarize
    from ..utils.errors import QfairError
    from ._console import console, table

    source = args.model
    quant: dict = {}
    if not source.strip():  # Path("") is the current folder
        raise QfairError("empty model name or path: pass a registered model name (`qfair models`), a checkpoint "
                         "file, a quantized run folder or a packed .qpk file")
    if Path(source).is_dir() and (Path(source) / "quant.json").is_file():  # a quantized run folder
        from ..quant import load_quantized

        if args.arch:
            raise QfairError(f"--arch describes a float checkpoint file; {source} is a quantized run folder, whose "
                             "quant.json records its architecture (drop --arch)")
        model = load_quantized(source)
        quant = dict(getattr(model, "qfair_quant", None) or {})
    elif Path(source).exists():
        model = load_model(source, arch=args.arch)  # a packed .qpk loads as the quantized model it holds
        quant = dict(getattr(model, "qfair_quant", None) or {})
    elif source in MODELS:
        if args.arch:
            raise QfairError(f"--arch describes a checkpoint file; '{source}' is a registered model name already "
                             "(drop --arch)")
        model = create_model(source)
    elif Path(source).suffix or "/" in source or os.sep in source:
        raise QfairError(f"'{source}' is neither a file nor a registered model: no such file or folder "
                         "(registered models: `qfair models`)")
    else:
        try:
            MODELS.canonical(source)  # raises with the closest registered name and the list
        except QfairError as exc:
            raise QfairError(f"'{source}' is neither a file nor a registered model: {exc}") from None
    s = summarize(model)
    kwargs = (getattr(model, "qfair_arch", None) or {}).get("kwargs") or {}
    arch = s.arch + (f" ({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")
    rows = [["architecture", arch], ["source", source], ["parameters", f"{s.params / 1e6:.2f} M ({s.params:,})"],
            ["MACs at 112x112", f"{s.macs / 1e9:.3f} G ({s.macs:,})"], ["embedding size", s.embedding_size],
            ["depthwise convs", s.depthwise_convs]]
    if quant:
        rows.append(["quantized", f"{quant.get('recipe')} W{quant.get('wbits')}A{quant.get('abits')}, "
                                  f"{quant.get('calib_images')} calibration images ({quant.get('calib_source')})"])
    rows += [[f"layers: {k}", v] for k, v in s.layer_counts.items()]
    console().print(table(f"qfair info {source}", ["property", "value"], rows))
    return 0
