"""``storagebench report``: result directories -> one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import click

from storagebench.cli.plan import plan_input_options


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="HTML file to write.")
@plan_input_options
def report(results: tuple[Path, ...], output: Path, **plan_inputs: float) -> None:
    """Render RESULTS (result directories of table1, run, e2e, flops, paper-tables, serve-bench, or a
    parent holding several) into ONE self-contained HTML file: scripts and styles are inlined, so it
    opens from disk with no network.

    The page holds the Table 1 reproduction next to the paper's figures, latency percentile curves
    from the HDR logs, CPU over time, disk and amplification, the end-to-end stage breakdown against
    the budget, FLOPs vs AUC, the full configuration of every run, and a capacity planner whose inputs
    can be changed in the page (the --dau ... options set its starting values; same model as
    `storagebench plan`).

    A missing, broken or partial result does not stop the report: its section says what is missing
    and which command produces it.

    Example: storagebench report results/table1 results/e2e -o results/report.html
    """
    from reports import PlanInputs, PlanningError, write_report

    inputs = PlanInputs(**plan_inputs)
    try:
        inputs.validate()
    except PlanningError as e:
        raise click.BadParameter(str(e)) from e
    loaded = write_report(results, output, inputs)
    for problem in loaded.problems:
        click.echo(f"warning: {problem}", err=True)
    kinds = ", ".join(sorted(loaded.kinds)) or "none"
    click.echo(f"loaded {len(loaded.results)} result file(s) ({kinds})", err=True)
    click.echo(str(output.resolve()))
