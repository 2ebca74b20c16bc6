"""docs/CONFIG_GUIDE.md is generated from the schema; it fails here when they drift apart."""

from __future__ import annotations

import inspect

import pytest
from conftest import REPO, load_script

from wuxia_lightning import config_guide
from wuxia_lightning.config_guide import SECTIONS, documented_args, render, schema_keys


def test_the_guide_on_disk_is_what_the_schema_generates():
    guide = REPO / "docs" / "CONFIG_GUIDE.md"
    assert guide.read_text(encoding="utf-8") == render(), "run: python scripts/make_config_guide.py"


def test_every_key_of_both_stages_and_both_datamodules_is_in_the_guide_and_described():
    text = render()
    keys = schema_keys()
    for section, path in SECTIONS:
        cls = config_guide._import(path)
        names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
        assert {k.name for k in keys if k.owner == cls.__name__} == set(names)
        for name in names:
            assert f"| `{section}.{name}` |" in text
    undocumented = [f"{k.owner}.{k.name}" for k in keys if not k.description]
    assert not undocumented, f"add these to the class docstring's Args: {undocumented}"


def test_grouped_arguments_are_each_documented():
    class Example:
        """Example.

        Args:
            alpha / beta: shared text
                that continues.
            gamma: own text.
        """

    assert documented_args(Example) == {"alpha": "shared text that continues.", "beta": "shared text that continues.",
                                        "gamma": "own text."}


def test_a_task_naming_a_removed_key_fails(monkeypatch):
    monkeypatch.setattr(config_guide, "TASKS", (("t", "advice", ("model.no_such_key",)),))
    with pytest.raises(KeyError, match="no_such_key"):
        render()


def test_the_script_checks_and_writes(tmp_path, capsys):
    script = load_script("make_config_guide")
    out = tmp_path / "guide.md"
    assert script.main(["--check", "--out", str(out)]) == 1
    assert script.main(["--out", str(out)]) == 0 and out.read_text(encoding="utf-8") == render()
    assert script.main(["--check", "--out", str(out)]) == 0
