"""storagebench: the harness that composes workloads, stores, rankers and measurements."""

__version__ = "0.1.0"
