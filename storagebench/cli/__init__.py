"""The ``storagebench`` command.

Each subcommand lives in its own module under ``storagebench.cli`` and is imported only when it
is used, so ``storagebench --help`` stays fast and a missing optional extra (``torch``) breaks only
the commands that need it.
"""

from __future__ import annotations

import importlib

import click

from seqvault.clierrors import GuardedGroup, with_debug_option
from seqvault.errors import SeqVaultError

# name -> (module, attribute, one-line help shown by `storagebench --help`)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "flops": ("storagebench.cli.flops", "flops",
              "FLOPs per (user, candidate) of each ranking model, analytic and measured."),
    "serve-bench": ("storagebench.cli.serve_bench", "serve_bench",
                    "Ranking-model serving benchmark: requests/s and p50/p99 over (L, C)."),
    "workload": ("storagebench.cli.workload", "workload",
                 "Generate, import and describe user-event workloads."),
    "sweep": ("storagebench.cli.sweep", "sweep",
              "Capacity curve: latency vs offered rate per store, and the highest rate inside a P99 SLO."),
    "table1": ("storagebench.cli.table1", "table1",
               "The paper's Table 1 measured here: RocksDB LastN vs RocksDB packed vs SeqVault."),
    "compare": ("storagebench.cli.compare", "compare",
                "Store shoot-out on one workload: CPU, P99, disk, DRAM per user and cost per million users."),
    "run": ("storagebench.cli.run", "run",
            "Replay a workload open-loop against one store and measure latency, CPU and disk."),
    "train": ("storagebench.cli.train", "train",
              "Train a ranking model on a workload's CTR task; report AUC and log loss."),
    "paper-tables": ("storagebench.cli.paper_tables", "paper_tables",
                     "Reproduce the shape of the LASER paper's Tables 2-4 on a workload."),
    "e2e": ("storagebench.cli.e2e", "e2e",
            "End to end: fetch from a store, build features, rank on GPU/CPU; stages against a budget."),
    "report": ("storagebench.cli.report", "report",
               "Render result directories into one self-contained HTML report."),
    "plan": ("storagebench.cli.plan", "plan",
             "Capacity plan (nodes, cores, DRAM, SSD, GPUs) from measured per-operation costs."),
}


class LazyGroup(GuardedGroup):
    """Imports each subcommand on first use; domain errors become one line (seqvault.clierrors)."""

    # A config value a command cannot use is a usage error (2); a store, node, replay or I/O
    # failure is a failed run (1). Anything else is a bug and keeps its traceback.
    usage_errors = (ValueError,)
    run_errors = (SeqVaultError, OSError, RuntimeError)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, attr, _ = SUBCOMMANDS[name]
        return with_debug_option(getattr(importlib.import_module(module), attr))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="storagebench")
def main() -> None:
    """Benchmark how to store and serve lifelong user-behaviour sequences for ranking.

    Replays realistic user-event workloads against SeqVault and RocksDB LastN stores, measures
    CPU, latency percentiles and disk, and sizes the fleet. See README.md for a tour.

    An error is one line on stderr (exit 2: a value the command cannot use; 1: the run failed);
    add --debug to any command (or set STORAGEBENCH_DEBUG=1) for the full traceback.
    """


if __name__ == "__main__":
    main()
