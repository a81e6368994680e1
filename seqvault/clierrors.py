"""One error path for a click command tree (``seqvault`` and ``storagebench`` both use it).

A domain error raised by a command (a bad config value, a store or engine error, a bad result
file) becomes one line on stderr, ``Error: <what was wrong and what to do>``, with exit status 2
for a usage error (a value the command cannot use) or 1 for a run that failed; a traceback only
with ``--debug`` (every command accepts it) or ``STORAGEBENCH_DEBUG=1``. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import click

from seqvault.errors import SeqVaultError

DEBUG_ENV = "STORAGEBENCH_DEBUG"


class RunFailed(click.ClickException):
    """The command ran and failed (exit status 1)."""

    exit_code = 1


class BadUsage(click.ClickException):
    """The command was given something it cannot use (exit status 2)."""

    exit_code = 2


def debug_enabled(ctx: click.Context | None = None) -> bool:
    ctx = ctx or click.get_current_context(silent=True)
    flagged = bool(ctx and ctx.find_root().meta.get("debug"))
    return flagged or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().meta["debug"] = True


def _debug_option() -> click.Option:
    return click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help=f"Show the full traceback on an error (or set {DEBUG_ENV}=1).")


def with_debug_option(cmd: click.Command) -> click.Command:
    """Give ``cmd`` (and, for a group, every subcommand) a ``--debug`` flag, once."""
    if not any(p.name == "debug" for p in cmd.params):
        cmd.params.append(_debug_option())
    if isinstance(cmd, click.Group) and not isinstance(cmd, GuardedGroup):
        for sub in cmd.commands.values():
            with_debug_option(sub)
    return cmd


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class GuardedGroup(click.Group):
    """A group whose commands report domain errors as one line (see the module docstring).

    ``usage_errors`` map to exit status 2, ``run_errors`` to 1.
    """

    usage_errors: tuple[type[BaseException], ...] = (ValueError,)
    run_errors: tuple[type[BaseException], ...] = (SeqVaultError, OSError)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        return with_debug_option(cmd) if cmd is not None else None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except self.usage_errors as e:
            if debug_enabled(ctx):
                raise
            raise BadUsage(one_line(e)) from e
        except self.run_errors as e:
            if debug_enabled(ctx):
                raise
            raise RunFailed(one_line(e)) from e

    def main(self, args: Sequence[str] | None = None, *a: Any, **kw: Any) -> Any:
        with_debug_option(self)
        return super().main(args, *a, **kw)


__all__ = ["DEBUG_ENV", "BadUsage", "GuardedGroup", "RunFailed", "debug_enabled", "one_line", "with_debug_option"]
