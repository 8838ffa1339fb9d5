"""The generated reference: it documents every field and docs/config.md is up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from floe.cli.main import main
from floe.config import dataset, docs, expressions
from floe.config.schema import OMIT, Field, Integer, ListOf, Object, String, walk

ROOT = Path(__file__).resolve().parents[2]


def test_every_dataset_field_has_an_entry_with_its_doc():
    text = docs.dataset_reference()
    for path, spec, _ in walk(dataset.DATASET):
        assert f"### `{path}`\n\n{spec.doc}\n" in text, path


def test_entries_show_type_default_bounds_and_example():
    schema = Object([
        Field("count", Integer(minimum=1, maximum=9), "How many.", default=3, example=5,
              details="More is slower."),
        Field("names", ListOf(String(), min_length=1), "Who.", example=["ann"]),
        Field("note", String(), "A remark.", default=OMIT),
    ], doc="A test schema.")
    text = docs.markdown(schema, "Test")
    assert text.startswith("# Test\n")
    assert ("### `count`\n\nHow many.\n\n- **type:** integer\n- **default:** `3`\n"
            "- **allowed:** from 1 to 9\n- **example:** `5`\n\nMore is slower.") in text
    assert ("- **type:** list of strings\n- **default:** required\n"
            "- **allowed:** at least 1 item") in text
    assert "| `note` | string | not set | A remark. |" in text
    assert "## Top level\n\nA test schema." in text


def test_nested_objects_get_one_section_each():
    text = docs.dataset_reference()
    for heading in ("## Top level", "## `tasks[]`", "## `tasks[].requirements`",
                    "## `tasks[].inputs[]`", "## `tasks[].outputs[]`", "## `tasks[].modules[]`"):
        assert text.count(f"\n{heading}\n") == 1, heading


def test_table_cells_escape_pipes():
    assert docs.table(["a"], [["x | y"]]) == "| a |\n|---|\n| x \\| y |"


def test_every_expression_function_is_described_once():
    assert set(dataset.EXPRESSION_FUNCTIONS) == set(expressions.FUNCTIONS)
    section = docs.expression_section()
    for usage, description in dataset.EXPRESSION_FUNCTIONS.values():
        assert f"| `{usage}` | {description} |" in section


def test_docs_config_md_is_current():
    current = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert current == docs.dataset_reference(), (
        "docs/config.md is out of date with config/dataset.py; run `make docs` and commit it")


def test_floe_docs_config_writes_the_file(tmp_path):
    target = tmp_path / "out" / "config.md"
    assert main(["docs", "config", "-o", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == docs.dataset_reference()


def test_floe_docs_config_prints_markdown_without_a_file():
    result = subprocess.run([sys.executable, "-m", "floe.cli.main", "docs", "config"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert result.stdout == docs.dataset_reference()


def test_floe_docs_refuses_an_unknown_topic(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["docs", "nonsense"])
    assert exit_.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
