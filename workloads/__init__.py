"""Realistic user-event streams: synthetic generators and loaders for real event logs.

Public API: :data:`DEFAULT_SCHEMA`, :data:`ACTIONS`, :data:`SCENARIOS`, :class:`GeneratorConfig`,
:func:`generate`, :class:`Workload`, :class:`LiveChunk`, :data:`OP_APPEND`, :data:`OP_READ`,
:func:`open_workload`, :func:`import_log`, :class:`ColumnMapping`, :class:`LogFormatError`.
"""

from workloads.base import OP_APPEND, OP_READ, LiveChunk, Workload
from workloads.config import GeneratorConfig
from workloads.loaders import ColumnMapping, LogFormatError, import_log
from workloads.schema import ACTIONS, DEFAULT_SCHEMA, SCENARIOS
from workloads.store import WorkloadDirError, open_workload
from workloads.synthetic import generate

__all__ = [
    "ACTIONS", "DEFAULT_SCHEMA", "OP_APPEND", "OP_READ", "SCENARIOS", "ColumnMapping", "GeneratorConfig",
    "LiveChunk", "LogFormatError", "Workload", "WorkloadDirError", "generate", "import_log", "open_workload",
]
