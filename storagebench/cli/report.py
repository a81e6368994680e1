"""``storagebench report``: result directories -> one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import click

from storagebench.cli.plan import plan_input_options


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
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

    Every file skipped is named with the reason (a broken or unknown JSON file, a directory with no
    result file) and the rest is still rendered; with nothing left to render the command fails
    (exit 1) and writes nothing. A result missing a section says so in the page.

    Example: storagebench report results/table1 results/e2e -o results/report.html
    """
    from reports import PlanInputs, PlanningError, load_results, write_report
    from seqvault.clierrors import RunFailed

    inputs = PlanInputs(**plan_inputs)
    try:
        inputs.validate()
    except PlanningError as e:
        raise click.BadParameter(str(e)) from e
    found = load_results(results)
    for problem in found.problems:
        click.echo(f"skipped: {problem}", err=True)
    if not found.results:
        raise RunFailed(f"no result file could be read under {', '.join(map(str, results))} "
                        f"({len(found.problems)} skipped, listed above); nothing written to {output}. "
                        "Pass result directories written by storagebench table1, run, e2e, ...")
    loaded = write_report(results, output, inputs, found)
    kinds = ", ".join(sorted(loaded.kinds)) or "none"
    click.echo(f"loaded {len(loaded.results)} result file(s) ({kinds})", err=True)
    click.echo(str(output.resolve()))
