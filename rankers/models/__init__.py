"""One module per ranking model; build them by name with :func:`rankers.registry.build_model`."""

from rankers.models.base import Base, BaseConfig
from rankers.models.din import Din, DinConfig
from rankers.models.hstu import Hstu, HstuConfig
from rankers.models.laser import Laser, LaserConfig
from rankers.models.llatte import Llatte, LlatteConfig
from rankers.models.transformer import Transformer, TransformerConfig
from rankers.models.twin import Twin, TwinConfig
from rankers.models.vista import Vista, VistaConfig

__all__ = [
    "Base", "BaseConfig", "Din", "DinConfig", "Hstu", "HstuConfig", "Laser", "LaserConfig",
    "Llatte", "LlatteConfig", "Transformer", "TransformerConfig", "Twin", "TwinConfig", "Vista", "VistaConfig",
]
