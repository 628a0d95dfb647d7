"""Model registry: ``create_model(name, **kwargs)``; every entry is tested (tests parametrize over it)."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..utils.errors import ConfigError
from ..utils.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def _iresnet(depth: int) -> Callable[..., nn.Module]:
    def build(num_features: int = 512, dropout: float = 0.0, width: int = 64, **kw: Any) -> nn.Module:
        from .iresnet import DEPTHS, IResNet

        _no_extra(f"iresnet{depth}", kw)
        return IResNet(DEPTHS[depth], num_features=num_features, dropout=dropout, width=width)

    from .iresnet import DEPTHS

    build.__doc__ = f"iresnet{depth} (arcface_torch), blocks per stage {list(DEPTHS[depth])}."
    return build


def _no_extra(name: str, kw: dict[str, Any]) -> None:
    if kw:
        raise ConfigError(f"model '{name}' got unknown arguments: {', '.join(sorted(kw))}")


for _d in (18, 34, 50, 100, 200):
    MODELS.add(f"iresnet{_d}", _iresnet(_d), aliases=(f"r{_d}",))


@MODELS.register("mbf", aliases=("mobilefacenet_arcface",))
def _mbf(num_features: int = 512, blocks: tuple[int, ...] = (1, 4, 6, 2), scale: int = 2, **kw: Any) -> nn.Module:
    """arcface_torch MobileFaceNet (``get_mbf``)."""
    from .mobilefacenet import MobileFaceNet

    _no_extra("mbf", kw)
    return MobileFaceNet(num_features=num_features, blocks=tuple(blocks), scale=scale)


@MODELS.register("mbf_large")
def _mbf_large(num_features: int = 512, **kw: Any) -> nn.Module:
    """arcface_torch ``get_mbf_large`` (blocks (2, 8, 12, 4), scale 4)."""
    from .mobilefacenet import MobileFaceNet

    _no_extra("mbf_large", kw)
    return MobileFaceNet(num_features=num_features, blocks=(2, 8, 12, 4), scale=4)


@MODELS.register("mobilefacenet", aliases=("mobilefacenet_qf", "quantface_mbf"))
def _mobilefacenet_qf(embedding_size: int = 512, **kw: Any) -> nn.Module:
    """QuantFace / distillation-study MobileFaceNet naming."""
    from .mobilefacenet import MobileFaceNetQF

    if "num_features" in kw:
        embedding_size = kw.pop("num_features")
    _no_extra("mobilefacenet", kw)
    return MobileFaceNetQF(embedding_size=embedding_size)


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
