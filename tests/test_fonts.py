"""Chart fonts: with no CJK font on the system the report falls back to the bundled Noto Sans CJK SC subset,
which must draw every Chinese character a chart can show (no "Glyph … missing from font(s)" warning)."""

from __future__ import annotations

import ast
import configparser
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, fontManager

from wuxia_lightning.metrics import FEATURE_NAMES
from wuxia_lightning.report import fonts, markdown, plots
from wuxia_lightning.report.fonts import (
    BUNDLED_FONT,
    CJK_FONT_NAMES,
    CjkFont,
    find_cjk_font,
    font_covers,
    missing_characters,
    subset_text,
)

REPO = Path(__file__).resolve().parents[1]
# Files whose string literals end up on charts (docstrings aside).
CHART_SOURCES = (*sorted((REPO / "wuxia_lightning" / "report").glob("*.py")),
                 REPO / "benchmarks" / "replication" / "render.py")
CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")
GLYPH_MISSING = re.compile(r"Glyph \d+ .*missing from font")


@pytest.fixture
def fresh_lookup() -> Iterator[None]:
    """find_cjk_font is cached per process: clear it around a test that changes what it would find."""
    find_cjk_font.cache_clear()
    yield
    find_cjk_font.cache_clear()


@pytest.fixture
def no_system_cjk_font(monkeypatch, fresh_lookup) -> None:
    """A machine without CJK fonts: matplotlib knows none of the CJK families and fc-list reports nothing.

    The system lookup itself still runs (not patched away), so the test also shows that it does not take
    the bundled subset, once registered, for a system font."""
    latin = [e for e in fontManager.ttflist if not any(n.lower() in e.name.lower() for n in CJK_FONT_NAMES)]
    monkeypatch.setattr(fontManager, "ttflist", latin)
    monkeypatch.setattr(fonts, "_fc_list_paths", lambda: [])


@contextmanager
def glyph_warnings(caplog) -> Iterator[list[str]]:
    """Collects matplotlib's missing-glyph complaints, whether they come as warnings or log records."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        yield found
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    found += [m for m in messages if GLYPH_MISSING.search(m)]


def _all_features_eval() -> dict:
    """style_eval.json with every feature, so a chart of all of them draws every label there is."""
    count = len(FEATURE_NAMES)
    return {"feature_names": list(FEATURE_NAMES),
            "rates": {"corpus": [float(count - i) for i in range(count)],
                      "base": [float(i % 7) for i in range(count)],
                      "styled": [float(count - i) / 2 for i in range(count)]},
            "js_divergence": {"base": 0.3125, "styled": 0.0625}}


def _chart_literals(path: Path) -> str:
    """Every string literal of a module except docstrings: what its charts may draw."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return "".join(node.value for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings)


# --------------------------------------------------------------------------- lookup


def test_without_system_fonts_the_bundled_subset_is_used(no_system_cjk_font):
    assert fonts.system_cjk_font() is None
    font = find_cjk_font()
    assert font == CjkFont("Wuxia CJK Subset", BUNDLED_FONT, bundled=True)
    assert any(Path(e.fname).resolve() == BUNDLED_FONT for e in fontManager.ttflist)  # registered
    assert FontProperties(family="Wuxia CJK Subset").get_name() == "Wuxia CJK Subset"
    assert fonts.system_cjk_font() is None  # registered, yet never mistaken for a system font


def test_the_bundled_path_is_never_a_system_font(monkeypatch, fresh_lookup):
    """Even under a matching name or listed by fc-list, the subset only counts as the fallback."""
    monkeypatch.setattr(fonts, "CJK_FONT_NAMES", ("Wuxia CJK",))
    monkeypatch.setattr(fontManager, "ttflist", list(fontManager.ttflist))
    fonts.bundled_cjk_font()  # registered under its family name
    monkeypatch.setattr(fonts, "_fc_list_paths", lambda: [str(BUNDLED_FONT)])
    assert fonts.system_cjk_font() is None


def test_a_system_font_wins_over_the_bundled_subset(monkeypatch, fresh_lookup):
    system = CjkFont("Some CJK", Path("/fonts/some-cjk.ttf"))
    monkeypatch.setattr(fonts, "system_cjk_font", lambda: system)
    assert find_cjk_font() == system


# --------------------------------------------------------------------------- coverage


def test_subset_covers_every_function_word_feature():
    assert BUNDLED_FONT.is_file()
    assert missing_characters(BUNDLED_FONT, "".join(FEATURE_NAMES)) == ""
    assert all(font_covers(BUNDLED_FONT, name) for name in FEATURE_NAMES)


def test_subset_covers_the_chinese_in_chart_code_and_its_whole_character_list():
    chart_chinese = "".join(CJK.findall("".join(_chart_literals(path) for path in CHART_SOURCES)))
    assert "虚" in chart_chinese  # the scan sees render.py's title, so an empty result means nothing
    assert missing_characters(BUNDLED_FONT, chart_chinese) == ""
    assert missing_characters(BUNDLED_FONT, subset_text()) == ""


def test_coverage_check_reports_what_a_font_lacks():
    from matplotlib import font_manager

    dejavu = font_manager.findfont("DejaVu Sans")
    assert missing_characters(dejavu, "ab 之乎之") == "之乎"
    assert not font_covers(dejavu, "之") and font_covers(dejavu, "<pos:u> 0.5")
    assert missing_characters(BUNDLED_FONT, "之龘") == "龘"  # the subset really is a subset
    assert missing_characters("/no/such/font.ttf", "a") == "a"


def test_setup_cfg_ships_the_font_files():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg", encoding="utf-8")
    value = config["options.package_data"]["wuxia_lightning"]
    # setuptools reads one pattern per line, or a comma-separated single line (never both)
    patterns = [p.strip() for p in (value.splitlines() if "\n" in value.strip() else value.split(","))]
    for name in (BUNDLED_FONT.name, "OFL.txt", "README.md"):
        assert (BUNDLED_FONT.parent / name).is_file()
        assert any(fnmatch(f"resources/fonts/{name}", p) for p in patterns), name


# --------------------------------------------------------------------------- rendering


def test_report_chart_draws_every_feature_from_the_bundled_font(no_system_cjk_font, tmp_path, caplog):
    style_eval = _all_features_eval()
    with glyph_warnings(caplog) as missing:
        png = plots.plot_function_words(style_eval, tmp_path / "function_words.png", top_k=len(FEATURE_NAMES))
    assert png.is_file() and png.stat().st_size > 10_000
    assert missing == []

    # the labels are the characters themselves (no code points), set in the bundled font
    figure = Figure()
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    curated = [i for i, name in enumerate(FEATURE_NAMES) if not name.startswith("<pos:")]
    plots.draw_rate_bars(axes, style_eval, curated, find_cjk_font())
    labels = axes.get_yticklabels()
    assert [label.get_text() for label in labels] == [FEATURE_NAMES[i] for i in curated]
    assert {Path(label.get_fontproperties().get_file()).resolve() for label in labels} == {BUNDLED_FONT}


def test_report_note_says_the_bundled_subset_was_used(no_system_cjk_font):
    note = " ".join(markdown._font_note(["之", "于是", "<pos:u>"]))
    assert "Wuxia CJK Subset" in note and "bundled" in note
    assert "Key:" not in note  # every label was drawn as characters: no code-point key needed


def test_negative_control_dejavu_alone_warns_about_missing_glyphs(tmp_path, caplog):
    """The warning check above can fail: the same capture sees DejaVu Sans miss a Chinese glyph."""
    figure = Figure()
    FigureCanvasAgg(figure)
    figure.add_subplot().set_title("虚词 之乎者也", fontproperties=FontProperties(family="DejaVu Sans"))
    with glyph_warnings(caplog) as missing:
        figure.savefig(tmp_path / "dejavu.png")
    assert missing and all("DejaVu Sans" in message for message in missing)
