"""``qfair synth``: write synthetic face images (PNG + contact sheet) -- data-free from a model's
BatchNorm statistics (ZeroQ), or the built-in benchmark's synthetic domain."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import add_config_arguments
    from ..data.config import SynthConfig

    p = sub.add_parser("synth", help="synthesise calibration faces from a model's BatchNorm statistics",
                       description="Optimise images so every BatchNorm layer sees its running statistics "
                       "(data-free, as in ZeroQ) and write them as PNG files plus _contact_sheet.png. Example: "
                       "qfair synth --model r50.pth --arch r50 --n 512 --out synth/  (then --calib-data synth/)")
    p.add_argument("--config", metavar="FILE", help="YAML file whose keys are the settings below")
    add_config_arguments(p, SynthConfig)
    p.set_defaults(func=run)


def load_face_model(model: str, arch: str, allow_random: bool):
    """A float model from a checkpoint, or a random registry model only with ``allow_random``."""
    from pathlib import Path

    from ..models import MODELS, create_model, load_model
    from ..utils.errors import ConfigError

    if Path(model).exists():
        return load_model(model, arch=arch or None).eval()
    if model in MODELS:
        if not allow_random:
            raise ConfigError(f"--model {model} is an architecture name, not a checkpoint: its BatchNorm layers hold "
                              f"no training statistics. Pass a checkpoint, or --allow-random to test the command")
        return create_model(model).eval()
    raise ConfigError(f"--model {model}: no such file, and not an architecture name (see `qfair models`)")


def check_settings(cfg) -> None:  # noqa: ANN001 - a SynthConfig
    """Refuse settings synth would silently not use, and an --out that holds another command's run (the PNGs
    would land among its files, and `--calib-data` on that folder would read whatever images it holds)."""
    from pathlib import Path

    from ..runs import RunDir
    from ..utils.errors import ConfigError

    if cfg.source == "builtin-synthetic" and (cfg.model or cfg.arch):
        flag = "--model" if cfg.model else "--arch"
        raise ConfigError(f"{flag} is not used with --source builtin-synthetic (the built-in benchmark's synthetic "
                          f"domain needs no model); drop {flag}, or use --source bn to synthesise from the model")
    if cfg.out:
        RunDir(Path(cfg.out)).refuse_foreign(())


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from ..config import load_config, overrides_from_args
    from ..data.config import SynthConfig
    from ._console import console

    from ..utils.io import output_folder

    cfg = load_config(SynthConfig, args.config, overrides_from_args(args, SynthConfig))
    check_settings(cfg)
    output_folder(cfg.out, create=False)  # a bad --out fails now, not after the synthesis
    t0 = time.perf_counter()
    if cfg.source == "builtin-synthetic":
        from ..data.builtin import make_synthetic_domain
        from ..data.preprocess import to_model_input

        images = to_model_input(make_synthetic_domain(cfg.n, seed=cfg.seed))
        label = "built-in synthetic domain (generated faces, not real people)"
    else:
        import torch

        from ..data.synthesis import SynthSettings, iter_synthesize_from_bn
        from ..utils.progress import track

        model = load_face_model(cfg.model, cfg.arch, cfg.allow_random)
        s = SynthSettings(iters=cfg.iters, lr=cfg.lr, tv=cfg.tv, init_res=cfg.init_res, batch_size=cfg.batch_size)
        n_batches = -(-cfg.n // cfg.batch_size)
        images = torch.cat(list(track(iter_synthesize_from_bn(model, cfg.n, seed=cfg.seed, settings=s),
                                      "synthesising", total=n_batches)))
        label = f"data-free images from the BatchNorm statistics of {cfg.model}"
    from ..data.synthesis import foreign_images, write_images

    title = label if cfg.source == "builtin-synthetic" else "data-free synthetic images from BatchNorm statistics"
    paths = write_images(images, cfg.out, title=title)
    dt = time.perf_counter() - t0
    console().print(f"wrote {len(paths)} images ({label}) to {cfg.out} in {dt:.1f} s "
                    f"({len(paths) / dt:.1f} images/s); contact sheet: {Path(cfg.out) / '_contact_sheet.png'}")
    others = foreign_images(cfg.out)
    if others:
        names = ", ".join(str(p.relative_to(cfg.out)) for p in others[:3]) + (", ..." if len(others) > 3 else "")
        console().print(f"[yellow]warning:[/] {cfg.out} also holds {len(others)} image(s) synth did not write "
                        f"({names}); `--calib-data {cfg.out}` would calibrate on them too. Move them out, or "
                        f"write the synthetic images into an empty folder.")
    return 0
