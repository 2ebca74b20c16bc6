"""The package's imports run one way: files → data → objective → Lightning module → adapters → report.

Walks every import of the package with ``ast`` — including imports inside functions, which hide an
upward arrow from a reader skimming the top of a file — and fails on the forbidden directions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wuxia_lightning"

# (importing layer, imported layer): arrows that would run back up the data flow.
FORBIDDEN = {
    ("modeling", "data"), ("objectives", "data"), ("modules", "data"),
    ("data", "modeling"), ("data", "objectives"), ("data", "modules"),
    ("objectives", "modules"), ("metrics", "modules"), ("objectives", "modeling"),
    ("pretrained", "data"), ("pretrained", "modeling"), ("pretrained", "modules"), ("pretrained", "objectives"),
}
# The shared vocabulary below everything imports nothing of the package but the error type.
BOTTOM = {"tokens", "batch", "errors", "io", "sources"}


def layer(module: str) -> str:
    """``wuxia_lightning.data.masking`` → ``data``; top-level modules are their own layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_imports() -> list[tuple[str, str, str, int]]:
    """(importing module, imported module, file, line) for every import of the package by the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found += [(module, target, str(path), node.lineno) for target in targets
                      if target.startswith("wuxia_lightning.")]
    return found


def test_the_walk_sees_imports_inside_functions():
    """Guard for the test itself: a function-level import must be found (metrics.registry's own
    top-level imports and evaluation.StyleScorer.from_corpus's function-level one)."""
    pairs = {(source, target) for source, target, _, _ in package_imports()}
    assert ("wuxia_lightning.evaluation", "wuxia_lightning.data.corpus") in pairs  # inside from_corpus
    assert len(pairs) > 100


def test_no_import_runs_back_up_the_data_flow():
    wrong = [f"{path}:{line}: {source} imports {target}" for source, target, path, line in package_imports()
             if (layer(source), layer(target)) in FORBIDDEN]
    assert not wrong, "\n".join(wrong)


def test_the_shared_vocabulary_imports_nothing_above_it():
    wrong = [f"{path}:{line}: {source} imports {target}" for source, target, path, line in package_imports()
             if layer(source) in BOTTOM and layer(target) not in BOTTOM]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("source,target", [("wuxia_lightning.modeling.tiny", "wuxia_lightning.data.corpus"),
                                           ("wuxia_lightning.data.masking", "wuxia_lightning.objectives.losses")])
def test_the_rule_catches_the_arrows_this_layout_removed(source, target):
    assert (layer(source), layer(target)) in FORBIDDEN
