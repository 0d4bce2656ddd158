"""The snap CLI through click's CliRunner, on every backend with a location."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from snapstore.cli.main import cli

from .factories import context, exchange, sample_state

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def snap(durable_store, tmp_path, monkeypatch):
    """Run ``snap --store <store> ARGS`` and return the click Result."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SNAPSTORE", raising=False)
    runner = CliRunner()
    location = durable_store.location
    first = runner.invoke(cli, ["--store", location, "init"])
    assert first.exit_code == 0, first.output

    def run(*args: str, input: str | None = None):
        return runner.invoke(cli, ["--store", location, *args], input=input)

    run.location = location  # type: ignore[attr-defined]
    run.store = durable_store  # type: ignore[attr-defined]
    return run


def write_state(path: Path, state) -> str:
    path.write_text(json.dumps(state))
    return str(path)


def fsck_json(snap) -> dict:
    result = snap("fsck", "--json")
    return json.loads(result.stdout)


def assert_one_line_error(result, pattern: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_commit_log_tree_show(snap, tmp_path):
    state = sample_state("conv-1")
    result = snap("commit", "conv-1", "--from", write_state(tmp_path / "s.json", state), "-m", "first")
    assert result.exit_code == 0, result.output
    first = result.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    state["contexts"][0]["local_memory"].append(exchange(50, "SB-1"))
    second = snap("commit", "conv-1", "--from", write_state(tmp_path / "s.json", state),
                  "--event", "exchange", "--context", "SB-1").stdout.strip()
    log = json.loads(snap("log", "conv-1", "--json").stdout)
    assert [e["snapshot"] for e in log] == [second, first]
    assert log[0]["event"] == {"type": "exchange", "context_id": "SB-1", "message": ""}
    assert log[0]["parents"] == [first] and log[1]["parents"] == []
    assert set(log[0]) >= {"snapshot", "root", "parents", "time", "event"}
    assert len(json.loads(snap("log", "conv-1", "-n", "1", "--json").stdout)) == 1
    tree = json.loads(snap("tree", "conv-1", "--json").stdout)
    assert tree["id"] == "SB-1" and tree["exchanges"] == 4
    assert [c["id"] for c in tree["children"]] == ["SB-2", "SB-4"]
    assert tree["children"][0]["children"][0]["id"] == "SB-3"
    text = snap("tree", "conv-1").stdout
    assert "SB-3" in text and "focus" in text
    shown = json.loads(snap("show", first[:10], "--json").stdout)
    assert shown["kind"] == "snapshot" and shown["id"] == first
    node = json.loads(snap("show", shown["object"]["root"], "--json").stdout)
    assert node["kind"] == "state"


def test_identical_commit_says_so(snap, tmp_path):
    path = write_state(tmp_path / "s.json", sample_state("c"))
    first = snap("commit", "c", "--from", path)
    again = snap("commit", "c", "--from", path)
    assert again.exit_code == 0
    assert "nothing to commit" in again.stderr
    assert again.stdout.strip() == first.stdout.strip()
    assert len(json.loads(snap("log", "c", "--json").stdout)) == 1


def test_checkout_output_then_commit_gives_the_same_root(snap, tmp_path):
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", sample_state("c")))
    out = tmp_path / "out.json"
    result = snap("checkout", "c", "-o", str(out))
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert {c["sidebar_id"]: c for c in written["contexts"]} == {
        c["sidebar_id"]: c for c in sample_state("c")["contexts"]}
    head_root = json.loads(snap("log", "c", "--json").stdout)[0]["root"]
    recommit = snap("commit", "c", "--from", str(out))
    assert "nothing to commit" in recommit.stderr
    written["conversation_id"] = "other"
    snap("commit", "other", "--from", write_state(tmp_path / "o.json", written))
    assert json.loads(snap("log", "other", "--json").stdout)[0]["root"] == head_root


def test_checkout_at_and_conversations(snap, tmp_path):
    state = sample_state("c")
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", state))
    state["contexts"][1]["status"] = "merged"
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", state))
    snap("commit", "d", "--from", write_state(tmp_path / "d.json", sample_state("d")))
    result = snap("checkout", "c", "--at", "c~1", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["restored"] is True and body["tree"]["id"] == "SB-1"
    log = json.loads(snap("log", "c", "--json").stdout)
    assert len(log) == 3 and log[0]["root"] == log[2]["root"]
    convs = json.loads(snap("conversations", "--json").stdout)
    by_name = {c["conversation"]: c for c in convs}
    assert by_name["c"]["active"] and not by_name["d"]["active"]
    assert set(by_name["c"]) == {"conversation", "head", "contexts", "exchanges", "updated", "active"}
    assert by_name["c"]["contexts"] == 4
    # log with no argument uses the active conversation
    assert json.loads(snap("log", "--json").stdout)[0]["snapshot"] == log[0]["snapshot"]


def test_diff_json_and_text(snap, tmp_path):
    state = sample_state("c")
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", state))
    state["contexts"][1]["status"] = "merged"
    state["contexts"][1]["local_memory"].append(exchange(77, "SB-2"))
    state["contexts"][2]["parent_context_id"] = "SB-4"
    state["contexts"].append(context("SB-5", parent="SB-1"))
    state["contexts"] = [c for c in state["contexts"] if c["sidebar_id"] != "SB-4"] + [
        c for c in state["contexts"] if c["sidebar_id"] == "SB-4"]
    del state["contexts"][0]["tags"]
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", state))
    body = json.loads(snap("diff", "c~1", "c", "--json").stdout)
    assert [a["id"] for a in body["added"]] == ["SB-5"]
    assert body["removed"] == []
    assert body["moved"] == [{"id": "SB-3", "old_parent": "SB-2", "new_parent": "SB-4"}]
    changed = {c["id"]: c for c in body["changed"]}
    assert changed["SB-2"]["fields"]["status"] == {"old": "active", "new": "merged"}
    assert changed["SB-2"]["exchanges_added"] == 1
    assert changed["SB-2"]["exchanges"]["local_memory"]["added"] == ["EXCH-77"]
    assert changed["SB-1"]["fields"]["tags"] == {"old": []}
    text = snap("diff", "c~1", "c").stdout
    assert "+ SB-5" in text and "> SB-3" in text and "~ SB-2" in text
    assert snap("diff", "c", "c").stdout.strip() == "no differences"


def test_fsck_reports_corruption_and_exits_nonzero(snap, tmp_path):
    snap("commit", "c", "--from", write_state(tmp_path / "s.json", sample_state("c")))
    clean = snap("fsck", "--json")
    assert clean.exit_code == 0 and json.loads(clean.stdout)["ok"] is True
    if snap.store.corrupt is None:
        pytest.skip("backend cannot be corrupted from outside")
    from snapstore.repository import Repository

    repo = Repository.open(snap.location)
    victim = repo.tree(repo.head("c")).records["SB-2"].node_id
    snap.store.corrupt(repo.backend, victim)
    repo.close()
    result = snap("fsck", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [(p["kind"], p["object"]) for p in report["problems"]] == [("corrupt", victim)]
    assert_one_line_error(snap("tree", "c"), victim)
    assert "corrupt" in snap("fsck").stdout


BAD_INPUTS = [
    (["commit", "c", "--from", "missing.json"], r"no such file"),
    (["commit", "c", "--from", "bad.json"], r"not valid JSON"),
    (["commit", "c", "--from", "list.json"], r"JSON object"),
    (["commit", "c", "--from", "nested.json"], r"nested too deeply|not valid JSON"),
    (["commit", "c", "--from", "bigint.json"], r"not valid JSON|digits"),
    (["commit", "c", "--from", "dup.json"], r"twice"),
    (["commit", "../x", "--from", "good.json"], r"invalid conversation id"),
    (["commit", "a/b", "--from", "good.json"], r"invalid conversation id"),
    (["commit", "a\x1b[31m", "--from", "good.json"], r"invalid conversation id"),
    (["commit", "x" * 300, "--from", "good.json"], r"characters long"),
    (["commit", "other", "--from", "good.json"], r"holds conversation"),
    (["commit", "c"], r"Missing option"),
    (["log", "nope"], r"unknown revision"),
    (["tree", "c~99"], r"goes back"),
    (["diff", "c", "zzzz"], r"unknown revision"),
    (["show", "abc"], r"unknown revision"),
    (["checkout", "ghost"], r"unknown conversation"),
    (["log", "-n", "0"], r"Invalid value"),
    (["frobnicate"], r"No such command"),
]


@pytest.mark.parametrize("args, pattern", BAD_INPUTS, ids=[" ".join(a)[:40] for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_changes_nothing(snap, tmp_path, args, pattern):
    (tmp_path / "bad.json").write_text('{"contexts": [')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "nested.json").write_text("[" * 100000 + "]" * 100000)
    (tmp_path / "bigint.json").write_text('{"contexts": [], "n": ' + "9" * 10000 + "}")
    dup = sample_state("c")
    dup["contexts"].append(dup["contexts"][0])
    write_state(tmp_path / "dup.json", dup)
    write_state(tmp_path / "good.json", sample_state("c"))
    snap("commit", "c", "--from", str(tmp_path / "good.json"))
    before = snap("log", "c", "--json").stdout
    result = snap(*args)
    assert_one_line_error(result, pattern)
    assert snap("log", "c", "--json").stdout == before
    assert fsck_json(snap)["ok"] is True


def test_not_a_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    (tmp_path / "plain").mkdir()
    result = runner.invoke(cli, ["--store", str(tmp_path / "plain"), "log"])
    assert_one_line_error(result, "not a snapstore store")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "store.sqlite").write_bytes(b"this is not sqlite" * 100)
    assert_one_line_error(runner.invoke(cli, ["--store", str(tmp_path / "junk"), "log"]), "not a snapstore")
    assert_one_line_error(runner.invoke(cli, ["--store", str(tmp_path / "nowhere"), "log"]), "no store at")
    assert_one_line_error(runner.invoke(cli, ["--store", str(tmp_path / "junk"), "init"]), "already exists")


def test_store_from_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SNAPSTORE", str(tmp_path / "envstore"))
    runner = CliRunner()
    assert runner.invoke(cli, ["init"]).exit_code == 0
    assert (tmp_path / "envstore" / "store.sqlite").exists()
    monkeypatch.delenv("SNAPSTORE")
    assert runner.invoke(cli, ["init"]).exit_code == 0
    assert (tmp_path / ".snapstore" / "store.sqlite").exists()


def test_demo_runs_and_restores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SNAPSTORE", raising=False)
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 0, result.output
    assert "tree restored exactly" in result.stdout
    assert (tmp_path / ".snapstore" / "store.sqlite").exists()
    second = CliRunner().invoke(cli, ["demo"])
    assert second.exit_code == 0 and "demo-2" in second.stdout
    assert json.loads(CliRunner().invoke(cli, ["fsck", "--json"]).stdout)["ok"]


def _commands():
    return sorted(cli.commands)


@pytest.mark.parametrize("name", _commands())
def test_every_command_has_help_and_is_documented(name):
    command = cli.commands[name]
    assert command.help and len(command.help.strip()) > 20
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    docs = (ROOT / "docs" / "cli.md").read_text()
    assert f"snap {name}" in docs, f"docs/cli.md does not document `snap {name}`"
    readme = (ROOT / "README.md").read_text()
    assert f"snap {name}" in readme, f"README does not mention `snap {name}`"
