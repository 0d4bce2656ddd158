"""The ``snap`` command: a thin skin over :class:`snapstore.repository.Repository`.

Every error becomes one line on stderr and a non-zero exit, never a
traceback (exit 1 for errors, 2 for bad usage).
"""

from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from snapstore.errors import InvalidInput, SnapstoreError
from snapstore.location import default_location, redact
from snapstore.repository import Repository

from .render import safe

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# Input echoed in a message is cut to about this many characters.
ECHO_LIMIT = 100
# A run of digits longer than ECHO_LIMIT, or a word (no space) over twice as long.
_LONG = re.compile(r"\d{%d,}|\S{%d,}" % (ECHO_LIMIT + 1, 2 * ECHO_LIMIT + 1))


def _clip(match: re.Match[str]) -> str:
    text = match.group()
    if text.isdigit():
        return f"{text[:ECHO_LIMIT]}...({len(text)} digits)"
    # Keep both ends: the end of a long path is its file name.
    return f"{text[:ECHO_LIMIT]}...({len(text)} characters)...{text[-ECHO_LIMIT // 2:]}"


def one_line(text: str) -> str:
    """Collapse a message to one line, with long echoed input (a 5,000-digit number, say) cut short
    and control characters escaped."""
    line = "; ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "error"
    return _LONG.sub(_clip, safe(line))  # echoed input escaped, as stored data is


def check_location(location: str) -> str:
    """``location`` if it can name a store; a typo of ``memory:`` is an error, not a folder.

    An empty location (``--store "$UNSET"``) is an error too: it would name the
    default store, which is not the one the user meant.
    """
    if not location.strip():
        raise InvalidInput(
            f"empty store location {location!r}: give a folder, URL or .toml config "
            "(leave the option out for $SNAPSTORE, else ./.snapstore)"
        )
    if location.strip().lower().startswith("memory:") and location != "memory:":
        raise InvalidInput(
            f"unknown store location {location!r}: the in-memory store is `memory:`, exactly "
            "(for a folder of that name write ./" + location.strip() + ")"
        )
    return location


def not_empty(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Option callback: an empty file or store name is an error, not a silent default or no-op."""
    if isinstance(value, str) and not value.strip():
        raise click.BadParameter(f"{value!r} is empty: give a name (or leave the option out)", ctx=ctx, param=param)
    return value


def export_target(output: str) -> Path:
    """The FILE an export command (`snap export`, `snap export-log`) writes, checked before any work.

    Both make the folders missing above FILE (and remove them again if the
    export fails). A FILE that is a folder, or a file standing where a
    folder must be, is one line naming it, the same for both, instead of
    the system's "File exists" or "Not a directory".
    """
    target = Path(output)
    if target.is_dir():
        raise InvalidInput(f"{output} is a directory: give the export a file name")
    blocker = next((p for p in target.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InvalidInput(f"cannot write {output}: {blocker} is a file, not a folder")
    return target


class OutputClosed(Exception):
    """Standard output was closed by its reader (``snap log | head``): stop quietly."""


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that flushing it at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


class SnapGroup(click.Group):
    """A click group that reports every failure as one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SnapstoreError as exc:
            raise click.ClickException(one_line(str(exc))) from None
        except BrokenPipeError:
            raise OutputClosed() from None
        except OSError as exc:
            name = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            raise click.ClickException(one_line(f"{exc.strerror or exc}{':' if name else ''}{name}")) from None
        except MemoryError:
            raise click.ClickException("out of memory (input too large?)") from None
        except RecursionError:
            raise click.ClickException("input nested too deeply") from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("SNAPSTORE_DEBUG"):
                raise
            raise click.ClickException(
                one_line(f"internal error: {type(exc).__name__}: {exc} (set SNAPSTORE_DEBUG=1 for a traceback)")
            ) from None

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name or "snap", complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else "see snap --help")
            sys.exit(0)
        except click.UsageError as exc:
            hint = f" (see 'snap {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else " (see 'snap --help')"
            click.echo(f"snap: error: {one_line(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"snap: error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("snap: aborted", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("snap: interrupted", err=True)
            sys.exit(130)
        except OutputClosed:
            # Like git: the reader has what it wanted; no message, the exit status of SIGPIPE.
            _silence_stdout()
            sys.exit(141)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


class Settings:
    """What the group options set, and the repository opened on demand."""

    def __init__(self, store: str | None) -> None:
        self.store = store
        self._repo: Repository | None = None

    @property
    def location(self) -> str:
        return check_location(self.store if self.store is not None else default_location())

    def repo(self) -> Repository:
        if self._repo is None:
            self._repo = Repository.open(self.location)
        return self._repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None


@click.group(cls=SnapGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--store",
    metavar="PATH|URL",
    callback=not_empty,
    help="Store location (default: $SNAPSTORE, else ./.snapstore).",
)
@click.version_option(package_name="snapstore", prog_name="snap")
@click.pass_context
def cli(ctx: click.Context, store: str | None) -> None:
    """snapstore: a Git-style snapshot store for LLM conversation trees.

    Each conversation is a tree of contexts (a root and nested sidebars),
    stored as content-addressed, compressed objects; every change is a
    snapshot, and a per-conversation ref points at the newest one.
    """
    settings = Settings(store)
    ctx.obj = settings
    ctx.call_on_close(settings.close)


def describe_location(location: str) -> str:
    """A store location as a note names it: any password redacted, control characters escaped."""
    return safe(redact(location))


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="snap")


from . import commands as _commands  # noqa: E402,F401  (registers the commands)
from . import audit as _audit  # noqa: E402,F401
from . import transfer as _transfer  # noqa: E402,F401
from . import demo as _demo  # noqa: E402,F401
from . import maintenance as _maintenance  # noqa: E402,F401
