"""Moving conversations between stores: clone and push."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from snapstore.backends.sqlite import DB_NAME
from snapstore.errors import StoreExists, StoreNotFound
from snapstore.location import is_url
from snapstore.repository import Repository
from snapstore.transfer import copy_conversations

from .main import Settings, check_location, cli, describe_location
from .render import dump_json, safe

PROGRESS_MIN_OBJECTS = 20000


class _Created:
    """What creating an embedded store at a path makes, so that a failed copy can take it away again.

    Either the topmost folder that did not exist (init makes it and
    everything below), or, in a folder that existed, the store's files.
    Shared stores (URLs, .toml configs) are left as they are.
    """

    def __init__(self, location: str) -> None:
        self.top: Path | None = None
        self.folder: Path | None = None
        if location == "memory:" or is_url(location) or (location.endswith(".toml") and Path(location).is_file()):
            return
        folder = Path(location).absolute()
        if folder.exists():
            self.folder = folder
            self.before = set(os.listdir(folder)) if folder.is_dir() else set()
            return
        top = folder
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        self.top = top

    def remove(self) -> None:
        if self.top is not None:
            shutil.rmtree(self.top, ignore_errors=True)
        elif self.folder is not None and self.folder.is_dir():
            for name in set(os.listdir(self.folder)) - self.before:
                if name.startswith(DB_NAME):  # store.sqlite and its -wal and -shm files
                    (self.folder / name).unlink(missing_ok=True)


@contextmanager
def destination_store(location: str) -> Iterator[Repository]:
    """The store at ``location``, created if there is none; if the work fails, a store made here is removed.

    What clone, push and replay write into: a command that fails leaves no store it made.
    """
    try:
        dst = Repository.open(location)
    except StoreNotFound as missing:
        created: _Created | None = _Created(location)
        try:
            dst = Repository.init(location)
        except StoreExists:
            # Something is there that is not a store (a damaged or foreign store.sqlite), or
            # another process made the store meanwhile: open it, else say why it cannot be.
            created = None
            try:
                dst = Repository.open(location)
            except StoreNotFound:
                raise missing from None
        except BaseException:
            created.remove()
            raise
    else:
        created = None
    try:
        dst.backend.check_writable("copying conversations into it")
        yield dst
    except BaseException:
        dst.close()
        if created is not None:
            created.remove()
        raise
    dst.close()


def _run_copy(src: Repository, dst: Repository, conversations: tuple[str, ...], as_json: bool) -> None:
    total = src.backend.count_objects()[0]
    if total >= PROGRESS_MIN_OBJECTS:
        with click.progressbar(length=total, label="copying objects", file=sys.stderr) as bar:
            report = copy_conversations(src, dst, conversations or None, progress=bar.update)
    else:
        report = copy_conversations(src, dst, conversations or None)
    if as_json:
        click.echo(dump_json(report.to_json()))
        return
    click.echo(f"copied {report.objects_copied} objects ({report.bytes_copied} bytes), "
               f"{report.objects_present} already there; every hash checked")
    for conv, head in report.refs_updated.items():
        click.echo(f"{safe(conv)} -> {head[:12]}")


@cli.command()
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
@click.argument("conversations", nargs=-1, metavar="[CONV]...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def clone(source: str, destination: str, conversations: tuple[str, ...], as_json: bool) -> None:
    """Copy conversations (default: all) from the store SRC to the store DST.

    Works between any two stores: an embedded folder, postgresql://...,
    s3+postgresql://... or a .toml config. DST is created if it does not
    exist. Every object is re-hashed as it is read; refs move only after all
    objects are written, and only forward (diverged histories are refused).
    """
    src = Repository.open(check_location(source))
    try:
        with destination_store(check_location(destination)) as dst:
            _run_copy(src, dst, conversations, as_json)
    finally:
        src.close()


@cli.command()
@click.argument("destination", metavar="DST")
@click.argument("conversations", nargs=-1, metavar="[CONV]...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_obj
def push(settings: Settings, destination: str, conversations: tuple[str, ...], as_json: bool) -> None:
    """Copy conversations (default: all) from this store (--store) to the store DST.

    The same as `snap clone <this store> DST`.
    """
    with destination_store(check_location(destination)) as dst:
        _run_copy(settings.repo(), dst, conversations, as_json)
    if not as_json:
        click.echo(f"pushed to {describe_location(destination)}", err=True)
