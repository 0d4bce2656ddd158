"""Moving conversations between stores: clone and push."""

from __future__ import annotations

import sys

import click

from snapstore.errors import StoreNotFound
from snapstore.location import redact
from snapstore.repository import Repository
from snapstore.transfer import copy_conversations

from .main import Settings, cli
from .render import dump_json

PROGRESS_MIN_OBJECTS = 20000


def _open_or_init(location: str) -> Repository:
    try:
        return Repository.open(location)
    except StoreNotFound:
        return Repository.init(location)


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
        click.echo(f"{conv} -> {head[:12]}")


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
    src = Repository.open(source)
    try:
        dst = _open_or_init(destination)
        try:
            _run_copy(src, dst, conversations, as_json)
        finally:
            dst.close()
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
    dst = _open_or_init(destination)
    try:
        _run_copy(settings.repo(), dst, conversations, as_json)
    finally:
        dst.close()
    if not as_json:
        click.echo(f"pushed to {redact(destination)}", err=True)
