"""Post-training quantization: ``quantize(model, cfg, calib_batches)``.

Calibration runs the prepared model once over the batches with every activation quantizer observing
and *not* quantizing (each layer sees float inputs, as TensorRT's and ModelOpt's calibrators do),
then freezes the ranges. Weights are already quantized. PTQ improvements from ``cfg.ptq`` follow
(``improve.py``). The library never owns the data loader: ``calib_batches`` is any iterable of
(B, 3, H, W) float tensors already normalised, or of (images, labels) tuples.
"""
from __future__ import annotations

import copy
import itertools
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..utils.errors import QfairError, QuantError
from ..utils.progress import track
from .config import QuantConfig
from .quantizer import iter_quantizers
from .recipes import as_quant_config, check_float_model, prepare


def as_images(batch: Any) -> torch.Tensor:
    """The image tensor of a calibration batch: a tensor, or the first item of a tuple / list."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    elif isinstance(batch, dict) and "images" in batch:
        batch = batch["images"]
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or not batch.is_floating_point():
        what = (f"{str(batch.dtype).replace('torch.', '')} {tuple(batch.shape)}" if isinstance(batch, torch.Tensor)
                else type(batch).__name__)
        hint = (" (uint8 images: normalise them with qfair.data.to_model_input)"
                if isinstance(batch, torch.Tensor) and not batch.is_floating_point() else
                " (a numpy array: torch.from_numpy, then qfair.data.to_model_input for uint8 images)"
                if type(batch).__name__ == "ndarray" else "")
        raise QuantError(f"a calibration batch must be a float (B, 3, H, W) tensor or an (images, labels) tuple; "
                         f"got {what}{hint}")
    return batch


# qfair's models take (x / 255 - 0.5) / 0.5, in [-1, 1] (README references [3]); a batch reaching this is
# still in pixel units (0..255), which would calibrate every range about 128 times too wide, silently.
_PIXEL_UNITS = 10.0


def _check_normalised(x: torch.Tensor) -> None:
    """Refuse a first calibration batch that is clearly not normalised (float pixels in 0..255)."""
    finite = x.detach().abs()
    finite = finite[torch.isfinite(finite)]  # NaN / Inf are reported by the layer they reach, with its name
    hi = float(finite.amax()) if finite.numel() else 0.0
    if hi > _PIXEL_UNITS:
        raise QuantError(f"the calibration images reach |x| = {hi:.1f}, but qfair models take images normalised to "
                         "[-1, 1] ((x / 255 - 0.5) / 0.5): these look like pixel values. Normalise them with "
                         "qfair.data.to_model_input (uint8 images), or use qfair.data.calibration_batches")


def _device(model: nn.Module) -> torch.device:
    p = next(itertools.chain(model.parameters(), model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of ``model``'s parameters (float32 when it has none)."""
    p = next((t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


def run_batches(model: nn.Module, batches: Iterable[Any], description: str = "", total: int | None = None) -> int:
    """Forward every batch under no_grad in eval mode; returns the number of images."""
    n, dev, was = 0, _device(model), model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in track(batches, description, total=total):
                x = as_images(b).to(dev)
                model(x)
                n += x.shape[0]
    finally:
        model.train(was)
    return n


def calibrate(qmodel: nn.Module, batches: Iterable[Any], total: int | None = None) -> int:
    """Observe activation ranges over ``batches`` (float pass-through), then freeze every quantizer."""
    quantizers = [q for _, q in iter_quantizers(qmodel)]
    for q in quantizers:
        q.calibrate()
    n = run_batches(qmodel, batches, "calibrating", total)
    if n == 0:
        raise QuantError("the calibration set is empty: pass at least one batch of images (--calib-data, "
                         "calib_size)")
    for q in quantizers:
        q.freeze()
    return n


class _Recorder:
    """Iterates a one-shot iterable of batches and yields their images in ``dtype`` (the model's: a float64 or
    float16 batch would otherwise stop the first conv with a dtype mismatch); keeps them when ``keep``, so PTQ
    improvements can reuse them."""

    def __init__(self, items: Iterable[Any], keep: bool, dtype: torch.dtype = torch.float32) -> None:
        self.items, self.keep, self.kept, self.dtype = items, keep, [], dtype

    def __iter__(self) -> Iterator[Any]:
        for b in self.items:
            x = as_images(b)
            x = x if x.dtype == self.dtype else x.to(self.dtype)
            if self.keep:
                self.kept.append(x)
            yield x


def quantize(model: nn.Module, cfg: QuantConfig | None = None, calib_batches: Iterable[Any] = (),
             example_input: torch.Tensor | None = None) -> nn.Module:
    """Prepare ``model`` by ``cfg.recipe``, calibrate on ``calib_batches``, freeze, apply ``cfg.ptq``.

    ``model``: a float ``nn.Module`` (``qfair.load_model``); an already-quantized model is refused.
    ``cfg``: a :class:`QuantConfig`, a mapping of its keys (``{"bits": 6}``) or None (W8A8 quantface).
    ``calib_batches``: an iterable of float (B, 3, 112, 112) batches normalised to [-1, 1] (or of
    (images, labels) tuples), e.g. ``qfair.data.calibration_batches(...)``, or one (N, 3, 112, 112)
    tensor, split into batches of ``cfg.calib_batch_size``.
    Returns a new fake-quant model (the input model is not modified) with ``qfair_quant`` metadata.
    """
    from .improve import PTQ_IMPROVEMENTS

    cfg = as_quant_config(cfg)
    check_float_model(model, "quantize")
    if isinstance(calib_batches, torch.Tensor):  # all images in one tensor (N, 3, H, W): batches of calib_batch_size
        if calib_batches.dim() != 4:
            as_images(calib_batches)  # the error names the shape
        calib_batches = list(calib_batches.split(cfg.calib_batch_size))
    total = len(calib_batches) if hasattr(calib_batches, "__len__") else None  # type: ignore[arg-type]
    it = iter(calib_batches)
    first = next(it, None)
    if first is None:
        raise QuantError("the calibration set is empty: pass at least one batch of images")
    _check_normalised(as_images(first))
    if example_input is None:
        example_input = as_images(first)[:2].detach().cpu()
    qmodel = prepare(model, cfg, example_input.to(_device(model)))
    rec = _Recorder(itertools.chain([first], it), keep=bool(cfg.ptq), dtype=model_dtype(model))
    try:
        n = calibrate(qmodel, rec, total)
    except RuntimeError as exc:  # a shape the model cannot take (e.g. 64x64 images): say what it expects
        if not isinstance(exc, QfairError) and tuple(as_images(first).shape[1:]) != (3, 112, 112):
            raise QuantError(f"{type(model).__name__} failed on a calibration batch of shape "
                             f"{tuple(as_images(first).shape)}: {str(exc).splitlines()[0]}. qfair face models take "
                             "(B, 3, 112, 112) images normalised to [-1, 1] (qfair.data.to_model_input)") from exc
        raise
    reference = None
    if len(cfg.ptq) > 1:  # each improvement changes the quantizers-off model: keep the float one as calibrated
        reference = copy.deepcopy(qmodel).eval()
        set_quantizers(reference, False)
    for name in cfg.ptq:
        PTQ_IMPROVEMENTS.get(name)(qmodel, rec.kept, cfg, reference=reference)
    del reference
    qmodel.qfair_quant.update(calibrated=True, calib_images=n, ptq=list(cfg.ptq))
    qmodel.eval()
    return qmodel


def set_quantizers(model: nn.Module, enabled: bool, names: set[str] | None = None) -> None:
    """Switch fake quantization on/off (all quantizers, or those whose module name is in ``names``)."""
    for name, q in iter_quantizers(model):
        if names is None or name in names:
            q.fake_quant_enabled = enabled
            q.observer_enabled = False


def freeze_for_export(model: nn.Module) -> nn.Module:
    """Make every dynamic (weight) quantizer static with its current range (export, AdaRound).

    Runs nothing: the ranges are those of the last forward, so call it after one forward pass
    (``quantize`` has run several)."""
    for _, q in iter_quantizers(model):
        q.make_static()
    return model
