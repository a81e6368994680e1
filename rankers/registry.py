"""Build any ranking model by name: ``build_model("laser", d=64)``."""

from __future__ import annotations

from typing import Any

from rankers.config import ModelConfig
from rankers.layers import RankingModel
from rankers.models import (
    Base,
    BaseConfig,
    Din,
    DinConfig,
    Hstu,
    HstuConfig,
    Laser,
    LaserConfig,
    Llatte,
    LlatteConfig,
    Transformer,
    TransformerConfig,
    Twin,
    TwinConfig,
    Vista,
    VistaConfig,
)

MODEL_NAMES: tuple[str, ...] = ("base", "din", "twin", "hstu", "transformer", "laser", "vista", "llatte")

_MODELS: dict[str, tuple[type[RankingModel], type[ModelConfig]]] = {
    "base": (Base, BaseConfig),
    "din": (Din, DinConfig),
    "twin": (Twin, TwinConfig),
    "hstu": (Hstu, HstuConfig),
    "transformer": (Transformer, TransformerConfig),
    "laser": (Laser, LaserConfig),
    "vista": (Vista, VistaConfig),
    "llatte": (Llatte, LlatteConfig),
}

__all__ = ["MODEL_NAMES", "ModelConfig", "RankingModel", "build_model", "config_class", "make_config"]


def config_class(name: str) -> type[ModelConfig]:
    """The dataclass config type of model ``name``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return _MODELS[name][1]


def make_config(name: str, config: ModelConfig | None = None, *, paper: bool = False,
                **overrides: Any) -> ModelConfig:
    """Model ``name``'s config: defaults (or ``paper_setting()`` when ``paper``), or ``config``; then
    ``overrides``. A config of another class (e.g. the shared ``ModelConfig``) lends its shared fields."""
    cls = config_class(name)
    if config is None:
        return cls.paper_setting(**overrides) if paper else cls.with_overrides(cls(), **overrides)
    if isinstance(config, cls):
        return cls.with_overrides(config, **overrides)
    return cls.from_shared(config, **overrides)


def build_model(name: str, config: ModelConfig | None = None, **overrides: Any) -> RankingModel:
    """A freshly initialised model ``name`` (one of ``MODEL_NAMES``) built from ``config`` + ``overrides``."""
    config = make_config(name, config, **overrides)   # validates the name first
    return _MODELS[name][0](config)
