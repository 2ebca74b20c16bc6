"""Run report: metrics.csv parsing, plots (valid, non-blank PNGs) and the Markdown built from a run folder."""

from __future__ import annotations

import csv
import json
import math
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

from wuxia_lightning.report import (
    best_value,
    build_report,
    ema,
    feature_label,
    fonts,
    markdown,
    plot_curves,
    plot_function_words,
    plots,
    read_metrics,
)

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# What Lightning's CSVLogger writes: sorted header, one row per logging call, blanks for the rest.
SMALL_CSV = """base/fw_js,epoch,step,train/kl,train/loss,val_style/ppl
,0,0,0.5,4.0,
,0,1,0.25,3.5,
0.2,0,1,,,120.0
,1,2,nan,3.0,
0.2,1,3,,,90.5
"""


def _assert_png(path: Path) -> None:
    """A real, non-blank PNG: signature, a plausible size from the IHDR chunk, and more than one colour."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 300, (path, width, height)
    assert len(data) > 10_000, (path, len(data))
    from matplotlib.image import imread

    assert float(np.asarray(imread(path)).std()) > 0.02, f"{path} is (nearly) blank"


def _write_stage1_csv(folder: Path, steps: int = 12) -> None:
    """Train rows every step; validation at steps 3, 7, 11 (logged at the last train step, like Lightning)."""
    val = {3: (150.0, 0.3, 9000.0, 0.45), 7: (90.5, 0.125, 8800.0, 0.4), 11: (101.25, 0.2, 8900.0, 0.35)}
    header = ["base/fw_js", "epoch", "step", "train/ce", "train/kl", "train/loss", "train/ppl",
              "train/share_function_word", "train/share_none", "train/share_span", "val_general/kl",
              "val_general/ppl", "val_style/fw_js", "val_style/kl", "val_style/loss", "val_style/ppl"]
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metrics.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        for step in range(steps):
            loss = 5.0 - 0.25 * step + (0.2 if step % 2 else -0.2)  # a falling, noisy curve
            writer.writerow({"epoch": step // 4, "step": step, "train/loss": loss, "train/ce": loss - 0.05,
                             "train/kl": 0.05 * step, "train/ppl": math.exp(loss), "train/share_span": 0.625,
                             "train/share_function_word": 0.25, "train/share_none": 0.125})
            if step in val:
                ppl, js, general, kl = val[step]
                writer.writerow({"epoch": step // 4, "step": step, "val_style/ppl": ppl,
                                 "val_style/fw_js": js, "val_style/kl": kl, "val_style/loss": math.log(ppl),
                                 "base/fw_js": 0.25, "val_general/ppl": general, "val_general/kl": kl / 2})


def _style_eval(samples: int = 4) -> dict:
    names = ["之", "乎", "竟", "于是", "<pos:u>", "<pos:p>"]
    return {"feature_names": names,
            "rates": {"corpus": [5.0, 1.0, 3.0, 0.5, 40.0, 10.0],
                      "base": [1.0, 0.0, 0.5, 0.0, 50.0, 12.0],
                      "styled": [4.0, 0.5, 2.5, 1.0, 42.0, 9.0]},
            "js_divergence": {"base": 0.3125, "styled": 0.0625},
            "samples": [{"prompt": f"剑光{i}", "base": f"base text {i}", "styled": f"styled text {i}"}
                        for i in range(samples)]}


def _write_predictions(folder: Path, count: int = 7) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"问题{i}", "generation": f"答{i}", "new_tokens": 10 + i, "stopped": i % 2 == 0,
             "continues_dialogue": False} for i in range(count)]
    rows[0]["generation"] = "甲|乙\n丙<|im_end|>"  # must not break the table row
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                              encoding="utf-8")
    summary = {"stop_rate": 0.5714, "prompts": count}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


@pytest.fixture
def no_cjk_font(monkeypatch):
    """Exercise the code-point fallback even on machines that do have a CJK font."""
    for module in (plots, markdown):  # the two report modules that look for a font
        monkeypatch.setattr(module, "find_cjk_font", lambda: None)


# --------------------------------------------------------------------------- parsing and helpers


def test_read_metrics_parses_sparse_rows_exactly(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(SMALL_CSV, encoding="utf-8")
    metrics = read_metrics(path)
    assert set(metrics) == {"base/fw_js", "train/kl", "train/loss", "val_style/ppl"}  # no epoch / step
    assert metrics["train/loss"] == [(0, 4.0), (1, 3.5), (2, 3.0)]
    assert metrics["val_style/ppl"] == [(1, 120.0), (3, 90.5)]
    assert metrics["base/fw_js"] == [(1, 0.2), (3, 0.2)]
    assert metrics["train/kl"][:2] == [(0, 0.5), (1, 0.25)]
    assert metrics["train/kl"][2][0] == 2 and math.isnan(metrics["train/kl"][2][1])


def test_ema_and_best_value_directions():
    assert ema([0.0, 10.0, 10.0], span=3) == [0.0, 5.0, 7.5]  # alpha = 2 / (3 + 1)
    assert ema([1.0, 2.0], span=1) == [1.0, 2.0]  # span 1: no smoothing
    points = [(1, 120.0), (3, 90.5), (5, float("nan")), (7, 101.0)]
    assert best_value("val_style/ppl", points) == (3, 90.5)
    assert best_value("val/stop_rate", [(1, 0.5), (2, 0.75), (3, 0.625)]) == (2, 0.75)
    assert best_value("val_style/ngram_char3", [(1, 0.5), (2, 0.25)]) == (1, 0.5)
    assert best_value("train/loss", points) is None  # only validation metrics get a "best"
    assert best_value("val/tokens_per_s", points) is None  # unknown direction


def test_feature_label_fallback_uses_code_points():
    assert feature_label("之", cjk=False) == "U+4E4B"
    assert feature_label("于是", cjk=False) == "U+4E8E U+662F"
    assert feature_label("之", cjk=True) == "之"
    assert feature_label("<pos:u>", cjk=False) == "<pos:u> other particles"


def test_dejavu_is_not_taken_for_a_cjk_font():
    from matplotlib import font_manager

    dejavu = font_manager.findfont("DejaVu Sans")
    assert not fonts._covers_cjk(dejavu)


# --------------------------------------------------------------------------- plots


def test_plot_curves_writes_png_or_returns_none(tmp_path):
    metrics = {"train/loss": [(s, 5.0 - 0.1 * s) for s in range(30)], "val_style/loss": [(9, 4.5), (19, 4.2)]}
    assert plot_curves(metrics, tmp_path / "none.png", ["train/kl"], "KL") is None
    assert not (tmp_path / "none.png").exists()
    png = plot_curves(metrics, tmp_path / "loss.png", ["train/loss", "val_style/loss", "train/kl"], "Loss")
    assert png == tmp_path / "loss.png"
    _assert_png(png)


def test_plot_curves_log_scale_drops_non_positive_values(tmp_path):
    metrics = {"train/ppl": [(0, 100.0), (1, float("inf")), (2, 0.0), (3, 50.0)]}
    png = plot_curves(metrics, tmp_path / "ppl.png", ["train/ppl"], "PPL", log_y=True)
    _assert_png(png)
    only_bad = {"train/ppl": [(0, float("nan")), (1, -1.0)]}
    assert plot_curves(only_bad, tmp_path / "bad.png", ["train/ppl"], "PPL", log_y=True) is None


def test_function_word_chart_fallback_draws_no_missing_glyphs(tmp_path, no_cjk_font):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = plot_function_words(_style_eval(), tmp_path / "fw.png", top_k=4)
    _assert_png(png)
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not missing, missing
    assert plots.top_features(_style_eval(), 4) == [4, 5, 0, 2]  # by corpus rate, highest first


# --------------------------------------------------------------------------- the report


def _linked_pngs(markdown: str, folder: Path) -> list[Path]:
    return [folder / name for name in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", markdown)]


def test_full_stage1_report(tmp_path, no_cjk_font):
    log_dir = tmp_path / "logs" / "style" / "version_3"
    _write_stage1_csv(log_dir)
    (log_dir / "style_eval.json").write_text(json.dumps(_style_eval(), ensure_ascii=False), encoding="utf-8")
    (log_dir / "hparams.yaml").write_text("kl_beta: 0.1\nlearning_rate: 0.002\n", encoding="utf-8")
    _write_predictions(tmp_path / "out")
    path = build_report(log_dir, predictions_dir=tmp_path / "out")
    assert path == log_dir / "report" / "report.md"
    text = path.read_text(encoding="utf-8")

    assert text.startswith("# Training report: style/version_3")
    assert "| `val_style/ppl` | 101.2 | 11 | 90.5 | 7 |" in text  # last and best (lowest)
    assert "| `val_style/fw_js` | 0.2 | 11 | 0.125 | 7 |" in text
    assert "| `train/loss` | 2.45 | 11 | — | — |" in text  # 5 - 0.25*11 + 0.2
    assert "| `val_general/ppl` | 8,900 | 11 | 8,800 | 7 |" in text
    assert "- kl_beta: `0.1`" in text

    links = _linked_pngs(text, path.parent)
    assert [p.name for p in links] == ["loss.png", "ppl.png", "kl.png", "shares.png", "function_words.png"]
    for png in links:
        _assert_png(png)

    assert "| base | 0.3125 |" in text and "| styled | 0.0625 |" in text
    assert "U+4E4B = 之" in text  # the code-point key of the fallback labels
    assert "styled text 2" in text and "styled text 3" not in text  # 3 samples
    assert "| `fw_js` | 0.25 | 0.2 | lower |" in text  # base vs styled at the last validation

    assert "| `stop_rate` | 0.5714 |" in text
    assert "甲\\|乙<br>丙&lt;\\|im_end\\|&gt;" in text  # escaped, still one row
    assert "| 5 | 问题4 | 答4 | 14 | yes | no |" in text and "问题5" not in text
    assert "not logged" not in text


def test_report_without_optional_files_says_not_logged(tmp_path):
    log_dir = tmp_path / "version_0"
    log_dir.mkdir()
    (log_dir / "metrics.csv").write_text("epoch,step,train/loss\n0,0,4.0\n0,1,3.0\n", encoding="utf-8")
    out = tmp_path / "rep"
    text = build_report(log_dir, out_dir=out).read_text(encoding="utf-8")
    assert "| `train/loss` | 3 | 1 | — | — |" in text
    assert "hparams.yaml: not logged" in text
    assert "style_eval.json: not logged" in text
    assert "## KL divergence to the frozen base\n\nnot logged" in text
    assert "## Predictions\n\nnot logged" in text
    assert [p.name for p in _linked_pngs(text, out)] == ["loss.png"]
    assert sorted(p.name for p in out.iterdir()) == ["loss.png", "report.md"]


def test_corrupt_optional_files_do_not_stop_the_report(tmp_path):
    log_dir = tmp_path / "version_1"
    _write_stage1_csv(log_dir, steps=4)
    (log_dir / "style_eval.json").write_text('{"feature_names": ["之"', encoding="utf-8")  # truncated
    (tmp_path / "out").mkdir()
    text = build_report(log_dir, predictions_dir=tmp_path / "out").read_text(encoding="utf-8")
    assert "style_eval.json: unreadable" in text
    assert "summary.json: not logged" in text and "no predictions.jsonl in" in text

    (log_dir / "style_eval.json").write_text('{"feature_names": ["之"], "rates": {}}', encoding="utf-8")
    text = build_report(log_dir).read_text(encoding="utf-8")
    assert "style_eval.json: malformed (KeyError" in text


def test_stage2_report_has_stop_rate_and_no_stage1_sections(tmp_path):
    log_dir = tmp_path / "instruct" / "version_0"
    log_dir.mkdir(parents=True)
    rows = ["epoch,step,train/ce,train/loss,train/ppl,val/continues_dialogue_rate,val/loss,val/ppl,val/stop_rate"]
    rows += [f"0,{s},{4 - 0.1 * s},{4 - 0.1 * s},{math.exp(4 - 0.1 * s)},,,," for s in range(10)]
    rows += ["0,4,,,,0.5,3.8,44.7,0.25", "0,9,,,,0.25,3.5,33.1,0.75"]
    (log_dir / "metrics.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    path = build_report(log_dir)
    text = path.read_text(encoding="utf-8")
    assert "stage 2 (instruct adapter)" in text
    assert "| `val/stop_rate` | 0.75 | 9 | 0.75 | 9 |" in text
    assert "| `val/continues_dialogue_rate` | 0.25 | 9 | 0.25 | 9 |" in text
    assert [p.name for p in _linked_pngs(text, path.parent)] == ["loss.png", "ppl.png", "rates.png"]
    assert "KL divergence" not in text and "Function words" not in text
    assert "train/kl" not in text  # a stage-1 key is not reported as missing from a stage-2 run


# --------------------------------------------------------------------------- the script


def test_script_prints_report_path(tmp_path, capsys):
    log_dir = tmp_path / "version_2"
    _write_stage1_csv(log_dir, steps=3)
    assert load_script("make_report").main([str(log_dir), "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "r" / "report.md") and Path(printed).is_file()


def test_script_without_metrics_exits_2_naming_the_folder(tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert load_script("make_report").main([str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: no metrics.csv in {empty}"
    assert not (empty / "report").exists()
