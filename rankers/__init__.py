"""PyTorch ranking models (LASER, its baselines, and the cached-summary VISTA and LLaTTE) that take plain
arrays.

Public API: the input contract (:class:`HistoryBatch`, :class:`Candidates`, :func:`history_from_csr`,
:func:`candidates_from_numpy`), models by name (:data:`MODEL_NAMES`, :func:`build_model`,
:func:`make_config` and the config classes), FLOP accounting (:func:`analytic_flops`,
:func:`measured_flops`), training (:func:`fit`, :func:`evaluate`) and the training-free floors
(:data:`HEURISTICS`, :func:`evaluate_heuristics`). ``rankers`` imports neither
``seqvault``, ``workloads`` nor ``storagebench``.
"""

from rankers.config import ModelConfig
from rankers.flops import FLOP_CONVENTION, analytic_flops, measured_flops
from rankers.heuristics import HEURISTICS, evaluate_heuristics
from rankers.inputs import Candidates, HistoryBatch, candidates_from_numpy, history_from_csr
from rankers.layers import RankingModel
from rankers.models import (
    BaseConfig,
    DinConfig,
    HstuConfig,
    LaserConfig,
    LlatteConfig,
    TransformerConfig,
    TwinConfig,
    VistaConfig,
)
from rankers.registry import MODEL_NAMES, build_model, config_class, make_config

# Training lives in rankers/training.py (owned by the training colleague).
from rankers.training import CTRArrays, TrainResult, evaluate, fit

__all__ = [
    "FLOP_CONVENTION", "HEURISTICS", "MODEL_NAMES", "BaseConfig", "CTRArrays", "Candidates", "DinConfig", "HistoryBatch",
    "HstuConfig", "LaserConfig", "LlatteConfig", "ModelConfig", "RankingModel", "TrainResult",
    "TransformerConfig", "TwinConfig", "VistaConfig", "analytic_flops", "build_model", "candidates_from_numpy",
    "config_class", "evaluate", "evaluate_heuristics", "fit", "history_from_csr", "make_config", "measured_flops",
]
