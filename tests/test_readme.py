"""The README's quick start is what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_has_the_ci_test_command_and_the_demo():
    readme = (ROOT / "README.md").read_text()
    command = (ROOT / "scripts" / "test-command").read_text().strip()
    assert command in readme
    assert "pip install . && snap demo" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test-command" in ci


def test_readme_python_example_names_real_api():
    import snapstore

    for name in ("Repository", "Event", "ConversationState"):
        assert hasattr(snapstore, name)
