"""Model registry: ``create_model(name, **kwargs)``; every entry is tested (tests parametrize over it)."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..utils.errors import ConfigError
from ..utils.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


# arcface_torch's get_model(name, fp16=..., ...) switches autocast on for training; it changes no weight,
# so it is accepted (configs copied from arcface_torch work) and qfair computes in float32.

def _positive(model: str, **values: Any) -> None:
    """Refuse sizes < 1 with a message naming the argument (torch would fail later, or build an empty layer)."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


def _iresnet(depth: int) -> Callable[..., nn.Module]:
    def build(num_features: int = 512, dropout: float = 0.0, width: int = 64, fp16: bool = False,
              **kw: Any) -> nn.Module:
        from .iresnet import DEPTHS, IResNet

        _no_extra(f"iresnet{depth}", kw)
        _positive(f"iresnet{depth}", num_features=num_features, width=width)
        return IResNet(DEPTHS[depth], num_features=num_features, dropout=dropout, width=width)

    from .iresnet import DEPTHS

    build.__doc__ = (f"iresnet{depth} (arcface_torch), blocks per stage {list(DEPTHS[depth])}.\n\n"
                     "Arguments: num_features (512), width (64), dropout (0.0), fp16 (ignored: qfair runs float32).")
    return build


def _no_extra(name: str, kw: dict[str, Any]) -> None:
    if kw:
        raise ConfigError(f"model '{name}' got unknown arguments: {', '.join(sorted(kw))}")


for _d in (18, 34, 50, 100, 200):
    MODELS.add(f"iresnet{_d}", _iresnet(_d), aliases=(f"r{_d}",))


@MODELS.register("mbf", aliases=("mobilefacenet_arcface",))
def _mbf(num_features: int = 512, blocks: tuple[int, ...] = (1, 4, 6, 2), scale: int = 2, fp16: bool = False,
         **kw: Any) -> nn.Module:
    """arcface_torch MobileFaceNet (``get_mbf``; keys layers.N, conv_sep, features).

    Arguments: num_features (512), blocks ((1, 4, 6, 2)), scale (2: trunk width / 64), fp16 (ignored)."""
    from .mobilefacenet import MobileFaceNet

    _no_extra("mbf", kw)
    blocks = tuple(blocks)
    if len(blocks) != 4:
        raise ValueError(f"blocks must give 4 stage depths, got {blocks}")
    _positive("mbf", num_features=num_features, scale=scale, **{f"blocks[{i}]": b for i, b in enumerate(blocks)})
    return MobileFaceNet(num_features=num_features, blocks=blocks, scale=scale)


@MODELS.register("mbf_large")
def _mbf_large(num_features: int = 512, fp16: bool = False, **kw: Any) -> nn.Module:
    """arcface_torch ``get_mbf_large`` (blocks (2, 8, 12, 4), scale 4).

    Arguments: num_features (512), fp16 (ignored)."""
    from .mobilefacenet import MobileFaceNet

    _no_extra("mbf_large", kw)
    _positive("mbf_large", num_features=num_features)
    return MobileFaceNet(num_features=num_features, blocks=(2, 8, 12, 4), scale=4)


@MODELS.register("mobilefacenet", aliases=("mobilefacenet_qf", "quantface_mbf"))
def _mobilefacenet_qf(embedding_size: int | None = None, **kw: Any) -> nn.Module:
    """QuantFace / distillation-study MobileFaceNet (keys conv1, conv_23, ..., output_layer; not mbf's).

    Arguments: embedding_size (512; also accepted as num_features)."""
    from .mobilefacenet import MobileFaceNetQF

    embedding_size = _embedding_size(embedding_size, kw.pop("num_features", None))
    _no_extra("mobilefacenet", kw)
    _positive("mobilefacenet", embedding_size=embedding_size)
    return MobileFaceNetQF(embedding_size=embedding_size)


def _embedding_size(embedding_size: int | None, num_features: int | None) -> int:
    """mobilefacenet's size from ``embedding_size`` or its synonym ``num_features`` (512 when neither);
    ValueError when both are given and differ (one would be dropped silently)."""
    if embedding_size is not None and num_features is not None and embedding_size != num_features:
        raise ValueError(f"embedding_size={embedding_size!r} and num_features={num_features!r} name the same "
                         "size (num_features is a synonym): give one of them")
    for v in (embedding_size, num_features):
        if v is not None:
            return v
    return 512


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered face backbone (random weights). ``qfair models`` lists the names.

    The model maps (B, 3, 112, 112) images in [-1, 1] to (B, model.embedding_size) embeddings and
    records its registry name and kwargs in ``model.qfair_arch`` (used to rebuild it later).
    """
    key = MODELS.canonical(name)
    try:
        model = MODELS.get(key)(**kwargs)
    except (TypeError, ValueError) as exc:  # a wrong keyword, or a value of the wrong type (width="a")
        raise ConfigError(f"model '{name}': bad arguments {kwargs}: {exc}") from None
    model.qfair_arch = {"name": key, "kwargs": dict(kwargs)}
    return model


def list_models() -> list[str]:
    """Registered architecture names (aliases such as ``r50`` are accepted too, see ``MODELS.aliases()``)."""
    return MODELS.names()
