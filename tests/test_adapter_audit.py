"""An adversarial audit of the drop-in adapter against the client's contract (reference §1-2).

Tests marked "defect" failed on the adapter before its fix; the others
guard behaviour that was already right.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from snapstore.adapters import sidebar_persistence as sp
from snapstore.errors import InvalidInput, StoreNotFound

from .client.model import SidebarContext, SidebarPriority, SidebarStatus
from .test_adapter import rich_context


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def persistence(store):
    instance = sp.SidebarPersistence(store, context_class=SidebarContext)
    yield instance
    instance.close()


def fresh(store: str) -> sp.SidebarPersistence:
    """Another instance on the store: it sees only what was durably stored."""
    return sp.SidebarPersistence(store, context_class=SidebarContext)


def stored_state(instance: sp.SidebarPersistence) -> tuple[dict, dict]:
    """The refs and the adapter's own meta keys: what a refused call must leave as it was."""
    meta = {k: v for k, v in instance.repo.backend.list_meta("").items() if not k.startswith("presence/")}
    return instance.repo.backend.list_refs(""), meta


def refused(instance: sp.SidebarPersistence, call, match: str) -> None:
    """``call`` raises a clear InvalidInput matching ``match`` and changes nothing stored."""
    before = stored_state(instance)
    with pytest.raises(InvalidInput, match=match):
        call()
    assert stored_state(instance) == before


# -- defects: bad input that was stored, and then made loads fail ----------------------------------


@pytest.mark.parametrize("field, value, match", [
    ("status", "bogus", "'status' must be a SidebarStatus or None, not str 'bogus'"),
    ("status", "active", "'status' must be a SidebarStatus"),  # would come back as the member, not the text
    ("priority", SidebarStatus.ACTIVE, "'priority' must be a SidebarPriority"),
    ("created_at", "garbage", "'created_at' must be a datetime or None, not str 'garbage'"),
    ("last_activity", "2026-01-01T00:00:00", "'last_activity' must be a datetime"),
], ids=["unknown-status", "status-as-text", "other-enum", "garbage-date", "date-as-text"])
def test_a_value_an_enum_or_datetime_field_cannot_give_back_is_refused(persistence, store, field, value, match):
    """Defect: such a value was saved (True) and then every load_context/load_all_contexts raised."""
    original = rich_context()
    persistence.save_context(original)
    bad = rich_context()
    setattr(bad, field, value)
    refused(persistence, lambda: persistence.save_context(bad), match)
    assert fresh(store).load_all_contexts() == [original]


def test_a_value_stored_before_saves_were_checked_loads_as_it_is(store):
    """Defect: one context whose status or date did not convert made every load raise (ValueError)."""
    untyped = sp.SidebarPersistence(store)  # no class known: dicts are stored as they are
    untyped.save_context({"sidebar_id": "SB-1", "uuid": "u", "parent_context_id": None,
                          "status": "bogus", "created_at": "yesterday"})
    untyped.save_context({"sidebar_id": "SB-2", "uuid": "u", "parent_context_id": None, "status": "paused"})
    untyped.close()
    typed_loads = fresh(store)
    odd = typed_loads.load_context("SB-1")
    assert odd.status == "bogus" and odd.created_at == "yesterday"
    assert typed_loads.load_context("SB-2").status is SidebarStatus.PAUSED
    assert sorted(c.sidebar_id for c in typed_loads.load_all_contexts()) == ["SB-1", "SB-2"]


def test_a_dict_lacking_a_field_the_class_requires_is_refused(persistence, store):
    """Defect: it was saved, and loads then raised TypeError (missing 'uuid') for every context."""
    persistence.save_context(rich_context())
    refused(persistence, lambda: persistence.save_context({"sidebar_id": "SB-2", "parent_context_id": None}),
            "context 'SB-2' lacks 'uuid', which SidebarContext requires")
    assert [c.sidebar_id for c in fresh(store).load_all_contexts()] == ["SB-1"]


def test_a_context_of_the_class_loads_need_lacks_nothing(persistence, store):
    """Guard: a dict with every required field is still a valid save, its other fields defaulted."""
    assert persistence.save_context({"sidebar_id": "SB-2", "uuid": "u", "parent_context_id": None})
    loaded = fresh(store).load_context("SB-2")
    assert (loaded.sidebar_id, loaded.uuid, loaded.parent_context_id) == ("SB-2", "u", None)
    assert loaded.status is SidebarStatus.ACTIVE and loaded.local_memory == [] and loaded.tags == []


@pytest.mark.parametrize("bad_id", [5, None, ("SB", 1)])
def test_a_context_id_that_is_not_a_string_is_a_clear_error(persistence, bad_id):
    """Defect: saving raised ``TypeError: can only concatenate str``; load/exists/delete answered "none"."""
    persistence.save_context(rich_context())
    bad = rich_context()
    bad.sidebar_id = bad_id
    refused(persistence, lambda: persistence.save_context(bad),
            re.escape(f"context id must be a non-empty string, got {bad_id!r}"))
    for call in (persistence.load_context, persistence.context_exists, persistence.delete_context):
        refused(persistence, lambda: call(bad_id), "context id must be a string")


def test_a_refused_first_save_notes_no_context_class(store):
    """Defect: the class was noted in the store (``adapter/context_class``) before the save was refused."""
    instance = sp.SidebarPersistence(store)
    bad = rich_context()
    bad.sidebar_id = 7
    with pytest.raises(InvalidInput):
        instance.save_context(bad)
    assert instance.repo.backend.get_meta(sp.CONTEXT_CLASS) is None
    instance.close()


def test_a_value_that_contains_itself_is_a_clear_error(persistence):
    """Defect: a RecursionError escaped the save; now an InvalidInput naming the context and field."""
    persistence.save_context(rich_context())
    bad = rich_context()
    bad.data_refs["self"] = bad.data_refs
    refused(persistence, lambda: persistence.save_context(bad), "context 'SB-1': field 'data_refs' contains itself")
    looping = []
    looping.append(looping)
    refused(persistence, lambda: persistence.set_session_state("k", looping), "'k' contains itself")


def test_a_session_value_json_cannot_write_is_an_invalid_input(persistence):
    """Defect: an int of more digits than Python converts to text raised a bare ValueError."""
    persistence.set_session_state("k", 1)
    refused(persistence, lambda: persistence.set_session_state("k", 10**5000), "session value for 'k': Exceeds")
    assert persistence.get_session_state("k") == 1


@pytest.mark.parametrize("call, match", [
    (lambda p: p.set_session_state(5, "x"), "session key must be a string, got int 5"),
    (lambda p: p.get_session_state(None), "session key must be a string"),
    (lambda p: p.set_session_state("k\ud800", "x"), "not valid Unicode"),
    (lambda p: p.register_conversation_root(42, "SB-1"), "conversation id must be a string"),
    (lambda p: p.register_conversation_root("c\udfff", "SB-1"), "not valid Unicode"),
    (lambda p: p.register_conversation_root("conv-1", None), "context id must be"),
    (lambda p: p.get_conversation_root(1), "conversation id must be a string"),
    (lambda p: p.mark_conversation_historical(1), "conversation id must be a string"),
], ids=["set-int-key", "get-none-key", "surrogate-key", "int-conversation", "surrogate-conversation",
        "none-root", "get-int-conversation", "mark-int-conversation"])
def test_keys_and_conversation_ids_that_are_not_text_are_a_clear_error(persistence, call, match):
    """Defect: these raised TypeError (``can only concatenate str``) or UnicodeEncodeError."""
    persistence.save_context(rich_context())
    refused(persistence, lambda: call(persistence), match)


def test_a_save_after_load_all_keeps_what_another_instance_changed(store):
    """Defect: load_all_contexts (what the client calls at startup) did not note what it gave the caller,
    so saving one of those objects wrote over another instance's change to other fields (lost update)."""
    first = sp.SidebarPersistence(store, context_class=SidebarContext)
    first.save_context(rich_context())
    first.close()
    mine = fresh(store)
    held = mine.load_all_contexts()[0]
    other = fresh(store)
    theirs = other.load_context("SB-1")
    theirs.tags = ["set by the other instance"]
    other.save_context(theirs)
    held.status = SidebarStatus.PAUSED
    mine.save_context(held)
    stored = fresh(store).load_context("SB-1")
    assert stored.status is SidebarStatus.PAUSED and stored.tags == ["set by the other instance"]


def test_a_save_after_the_store_was_deleted_is_refused_not_lost(persistence, store):
    """Defect: SQLite went on writing to the deleted file: the save returned True and nothing was kept."""
    persistence.save_context(rich_context())
    shutil.rmtree(store)
    with pytest.raises(StoreNotFound, match="was deleted after this instance opened it"):
        persistence.save_context(rich_context("SB-2", "SB-1"))
    with pytest.raises(StoreNotFound):
        persistence.load_context("SB-1")


def test_a_save_after_the_store_was_replaced_is_refused_not_lost(persistence, store):
    """Defect: the save went to the old, unlinked file; the store now at the path never had it."""
    persistence.save_context(rich_context())
    shutil.rmtree(store)
    replacement = fresh(store)
    replacement.save_context(rich_context("SB-9"))
    with pytest.raises(StoreNotFound, match="was replaced"):
        persistence.save_context(rich_context("SB-2", "SB-1"))
    assert [c.sidebar_id for c in fresh(store).load_all_contexts()] == ["SB-9"]
    replacement.close()


def test_reset_persistence_forgets_an_instance_whose_close_fails(store):
    """Defect: a close that raised left the old instance in ``_persistence_instance``; so did one put
    there by a test whose ``close()`` takes no argument (TypeError on ``close(clean=False)``)."""

    class Foreign:
        closed = False

        def close(self):
            Foreign.closed = True

    sp.reset_persistence()
    sp._persistence_instance = Foreign()
    try:
        sp.reset_persistence()
    finally:
        forgotten = sp._persistence_instance is None
        sp._persistence_instance = None
    assert forgotten and Foreign.closed

    class Broken(sp.SidebarPersistence):
        def close(self, clean=True):
            raise RuntimeError("disk gone")

    sp._persistence_instance = Broken(store)
    with pytest.raises(RuntimeError):
        sp.reset_persistence()
    try:
        assert sp._persistence_instance is None
    finally:
        sp._persistence_instance = None


def test_statistics_depth_follows_parent_links_across_conversations(persistence):
    """Defect: a child saved before its parent sits in a conversation of its own; depth counted per
    conversation gave max_depth 0 for a tree two levels deep."""
    persistence.save_context(rich_context("SB-3", "SB-2"))
    persistence.save_context(rich_context("SB-2", "SB-1"))
    persistence.save_context(rich_context("SB-1"))
    stats = persistence.get_statistics()
    assert stats["total_contexts"] == 3 and stats["max_depth"] == 2


def test_contexts_saved_as_dicts_with_enums_and_datetimes_are_filtered_and_ordered(store):
    """Defect: a dict's enum status and datetime last_activity are stored tagged; the archived filter,
    by_status and the newest-first order read only the plain form (an archived context was listed)."""
    instance = sp.SidebarPersistence(store)
    for cid, status, day in (("SB-1", SidebarStatus.ARCHIVED, 1), ("SB-2", SidebarStatus.ACTIVE, 2),
                             ("SB-3", SidebarStatus.ACTIVE, 3)):
        instance.save_context({"sidebar_id": cid, "parent_context_id": None, "status": status,
                               "last_activity": datetime(2026, 1, day)})
    assert [c["sidebar_id"] for c in instance.load_all_contexts()] == ["SB-3", "SB-2"]
    assert [c["sidebar_id"] for c in instance.load_all_contexts(include_archived=True)] == ["SB-3", "SB-2", "SB-1"]
    assert instance.get_statistics()["by_status"] == {"archived": 1, "active": 2}
    instance.close()


# -- guards: behaviour that was right ------------------------------------------------------------


def test_edge_values_round_trip_exactly_through_a_new_instance(persistence, store):
    """Guard: floats, huge ints, lone surrogates, NUL, tuples, {} vs None, empty lists, long text."""
    ctx = rich_context()
    ctx.local_memory[0].update({"neg_zero": -0.0, "huge": 1e308, "tiny": 5e-324, "big": -10**400,
                                "text": "a\ud800b\x00c\U0001f642", "pair": (1, ("x", None)), "none": None,
                                "empty": {}, "nothing": [], "long": "ü" * 2_000_000})
    ctx.data_refs = {"10": 1, "2": {"01": [[], {}]}, "$snapstore": "not a tag", "when": datetime(2026, 1, 1, 1)}
    ctx.yarn_board_layout = {"nodes": {}, "edges": None, "at": datetime(2026, 1, 1, tzinfo=timezone.utc)}
    ctx.relevance_scores = {"EXCH-1": -0.0, "EXCH-2": 1e308}
    ctx.inherited_memory, ctx.tags, ctx.display_names = [], [], {}
    ctx.cross_sidebar_refs["SB-9"]["kind"] = SidebarPriority.HIGH
    ctx.task_description = "\ud83d lone high, \x00 NUL"
    persistence.save_context(ctx)
    for loaded in (persistence.load_context("SB-1"), fresh(store).load_context("SB-1")):
        assert loaded == ctx
        memory = loaded.local_memory[0]
        assert str(memory["neg_zero"]) == "-0.0" and str(loaded.relevance_scores["EXCH-1"]) == "-0.0"
        assert type(memory["pair"]) is tuple and type(memory["pair"][1]) is tuple
        assert memory["empty"] == {} and memory["none"] is None and loaded.data_refs["2"]["01"] == [[], {}]
        assert loaded.yarn_board_layout["edges"] is None and loaded.inherited_memory == []
        assert loaded.cross_sidebar_refs["SB-9"]["kind"] is SidebarPriority.HIGH
        assert loaded.created_at.tzinfo is None


def test_an_aware_datetime_and_none_in_typed_fields_round_trip(persistence, store):
    """Guard: the checks let through what comes back as it was (None, an aware datetime)."""
    ctx = rich_context()
    ctx.created_at = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=-3)))
    ctx.status = None
    persistence.save_context(ctx)
    loaded = fresh(store).load_context("SB-1")
    assert loaded == ctx and loaded.created_at.utcoffset() == timedelta(hours=-3) and loaded.status is None


@pytest.mark.parametrize("value", [
    None, 0, -0.0, 1e308, 10**40, "x\ud800\x00", (1, (2,)), [1, (2,)], {"a": None}, {}, [], True,
    datetime(2026, 1, 1), SidebarStatus.PAUSED, {"$snapstore": "datetime", "value": "x"},
])
def test_session_state_values_round_trip_with_their_types(persistence, store, value):
    """Guard: what set_session_state stores, get_session_state gives back in a new instance, typed."""
    assert persistence.set_session_state("key", value) is True
    got = fresh(store).get_session_state("key", "default")
    assert got == value and type(got) is type(value) and repr(got) == repr(value)


def test_delete_keeps_children_and_a_full_copy_and_is_false_when_nothing_is_there(persistence, store):
    """Guard: deleting one context removes it alone (as deleting its row did), records why and who."""
    root = rich_context("SB-1")
    root.child_sidebar_ids = ["SB-2"]
    middle = rich_context("SB-2", "SB-1")
    middle.child_sidebar_ids = ["SB-3"]
    leaf = rich_context("SB-3", "SB-2")
    for ctx in (root, middle, leaf):
        persistence.save_context(ctx)
    assert persistence.delete_context("SB-2", reason="merged away", deleted_by="human") is True
    assert persistence.delete_context("SB-2") is False and persistence.delete_context("SB-404") is False
    other = fresh(store)
    assert sorted(c.sidebar_id for c in other.load_all_contexts()) == ["SB-1", "SB-3"]
    assert other.load_context("SB-3") == leaf
    repo = persistence.repo
    conv = repo.conversation_ids()[0]
    deletion = repo.log(conv)[0].snapshot.event
    assert deletion.type == "context_deleted" and "reason: merged away; deleted by: human" in deletion.message
    kept = {c["sidebar_id"]: c for c in repo.load(f"{conv}~1").contexts}["SB-2"]
    assert sp.typed.from_json(SidebarContext, kept) == middle


def test_two_instances_saving_at_once_lose_no_context(persistence, store):
    """Guard: two instances on one store, one thread each, every save kept."""
    persistence.save_context(rich_context("SB-1"))
    other = fresh(store)
    errors: list[BaseException] = []

    def save_many(instance: sp.SidebarPersistence, first: int) -> None:
        try:
            for n in range(first, first + 15):
                instance.save_context(rich_context(f"SB-{n}", "SB-1"))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=save_many, args=(persistence, 100)),
               threading.Thread(target=save_many, args=(other, 200))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(fresh(store).load_all_contexts()) == 31
    assert persistence.context_exists("SB-214") and other.context_exists("SB-114")
    other.close()


def test_get_persistence_uses_db_path_once_and_configure_afterwards(tmp_path):
    """Guard: the first call's db_path makes the shared instance; reset drops it; configure applies next."""
    sp.reset_persistence()
    try:
        first = sp.get_persistence(str(tmp_path / "a"))
        assert sp.get_persistence(str(tmp_path / "b")) is first and first.location == str(tmp_path / "a")
        sp.configure(store=str(tmp_path / "c"), context_class=SidebarContext)
        assert sp.get_persistence() is first
        sp.reset_persistence()
        again = sp.get_persistence()
        assert again is not first and again.location == str(tmp_path / "c")
        again.save_context(rich_context())
        assert isinstance(again.load_context("SB-1"), SidebarContext)
    finally:
        sp.reset_persistence()
        sp.configure()
    assert not Path(tmp_path / "b").exists()


@dataclass
class Minimal:
    sidebar_id: str
    parent_context_id: str | None = None
    status: SidebarStatus = SidebarStatus.ACTIVE


def test_a_context_class_without_optional_fields_still_loads(store):
    """Guard: the required-field check asks only for what the caller's own class requires."""
    instance = sp.SidebarPersistence(store, context_class=Minimal)
    instance.save_context({"sidebar_id": "SB-1"})
    instance.save_context(Minimal("SB-2", "SB-1", SidebarStatus.PAUSED))
    assert instance.load_context("SB-1") == Minimal("SB-1")
    assert fresh_minimal(store).load_context("SB-2") == Minimal("SB-2", "SB-1", SidebarStatus.PAUSED)
    instance.close()


def fresh_minimal(store: str) -> sp.SidebarPersistence:
    return sp.SidebarPersistence(store, context_class=Minimal)


def test_configure_takes_a_path_object_for_the_store(tmp_path):
    """Defect: ``configure(store=Path(...))`` made get_persistence raise TypeError (``"://" in path``)."""
    sp.reset_persistence()
    sp.configure(store=tmp_path / "store", context_class=SidebarContext)
    try:
        instance = sp.get_persistence()
        instance.save_context(rich_context())
        assert instance.location == str(tmp_path / "store")
    finally:
        sp.reset_persistence()
        sp.configure()
    assert fresh(str(tmp_path / "store")).load_context("SB-1") == rich_context()


def test_a_store_opened_by_a_relative_path_stays_usable_after_a_change_of_directory(tmp_path, monkeypatch):
    """Guard (of the deleted-store check): the file is the one opened, not the path read again."""
    monkeypatch.chdir(tmp_path)
    instance = sp.SidebarPersistence("relative-store", context_class=SidebarContext)
    monkeypatch.chdir(tmp_path.parent)
    assert instance.save_context(rich_context()) is True
    assert instance.load_context("SB-1") == rich_context()
    instance.close()


def test_a_save_is_in_the_store_when_it_returns_even_if_the_process_dies_then(store):
    """Guard: each save is committed before it returns (no deferred write the process must live for)."""
    code = (
        "import os, sys; sys.path.insert(0, %r)\n"
        "from tests.test_adapter import rich_context\n"
        "from snapstore.adapters import sidebar_persistence as sp\n"
        "p = sp.SidebarPersistence(%r)\n"
        "with p.operation('sidebar_spawn', 'SB-2'):\n"
        "    p.save_context(rich_context('SB-1'))\n"
        "    p.save_context(rich_context('SB-2', 'SB-1'))\n"
        "    os._exit(0)\n"
    ) % (str(Path(__file__).resolve().parent.parent), store)
    subprocess.run([sys.executable, "-c", code], check=True)
    assert sorted(c.sidebar_id for c in fresh(store).load_all_contexts()) == ["SB-1", "SB-2"]
