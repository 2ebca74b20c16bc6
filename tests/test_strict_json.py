"""Every JSON file we write is strict JSON: NaN/Inf become null, never the non-standard ``NaN`` token (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import load_script, strict_loads

from wuxia_lightning.io import finite_or_null, strict_json

NAN, INF = float("nan"), float("inf")


def test_strict_parser_refuses_what_plain_json_dumps_writes():
    # Guards the tests below: if this parser accepted NaN they would pass on any writer.
    for value in (NAN, INF, -INF):
        with pytest.raises(ValueError, match="non-standard"):
            strict_loads(json.dumps({"x": value}))


def test_finite_or_null_replaces_non_finite_floats_at_any_depth():
    value = {"a": NAN, "b": [1.5, INF, (-INF, 2)], "c": {"d": {"e": NAN, "f": "武侠"}}, "g": 0.0,
             "h": None, "i": True, "j": 3}
    assert finite_or_null(value) == {"a": None, "b": [1.5, None, [None, 2]], "c": {"d": {"e": None, "f": "武侠"}},
                                     "g": 0.0, "h": None, "i": True, "j": 3}
    assert finite_or_null(NAN) is None and finite_or_null(-INF) is None and finite_or_null(2.5) == 2.5


def test_strict_json_writes_null_keeps_options_and_unicode():
    value = {"fw_js": NAN, "scores": [INF, -INF, 0.25], "nested": ({"loss": NAN},), "名": "郭靖"}
    text = strict_json(value, indent=2)
    assert strict_loads(text) == {"fw_js": None, "scores": [None, None, 0.25], "nested": [{"loss": None}],
                                  "名": "郭靖"}
    assert "郭靖" in text and '\n  "fw_js": null' in text  # ensure_ascii off; indent passed through
    assert strict_json({"b": 1, "a": NAN}, sort_keys=True) == '{"a": null, "b": 1}'


class FakePeftModel:
    """Stands in for a peft model: ``save_pretrained`` writes the adapter files peft would."""

    def save_pretrained(self, folder, selected_adapters=(), save_embedding_layers="auto") -> None:
        (Path(folder) / "adapter_config.json").write_text("{}", encoding="utf-8")


def test_stage1_adapter_manifest_with_nan_is_strict_json(tmp_path):
    from wuxia_lightning.modeling.adapters import save_adapter_atomically

    manifest = {"base_model": "Qwen/Qwen2.5-7B", "val_style/fw_js": NAN, "metrics": {"loss": INF, "ppl": [1.0, NAN]}}
    out = save_adapter_atomically(FakePeftModel(), "default", tmp_path / "style", manifest=manifest)
    written = strict_loads((out / "wuxia_manifest.json").read_text(encoding="utf-8"))
    assert written == {"base_model": "Qwen/Qwen2.5-7B", "val_style/fw_js": None,
                       "metrics": {"loss": None, "ppl": [1.0, None]}}


def test_style_eval_report_with_nan_scores_is_strict_json(tmp_path):
    from wuxia_lightning.callbacks.style_samples import StyleSampleEvaluation

    evaluation = StyleSampleEvaluation(prompts_file="unused.txt", samples=1, max_new_tokens=8)
    # fw_js is NaN for a reply without function words (the case issue 13 was about).
    evaluation.scorer = SimpleNamespace(corpus_rates=lambda: [1.0, 2.0])
    evaluation.base = {"texts": ["基础"], "scores": {"fw_js": NAN, "distinct_1": 1.0}, "rates": [0.0, INF]}
    styled = {"texts": ["风格"], "scores": {"fw_js": NAN, "distinct_1": 0.5}, "rates": [NAN, 1.0]}
    path = tmp_path / "style_eval.json"
    evaluation.write(path, ["提示"], styled)
    report = strict_loads(path.read_text(encoding="utf-8"))
    assert report["js_divergence"] == {"base": None, "styled": None}
    assert report["rates"] == {"corpus": [1.0, 2.0], "base": [0.0, None], "styled": [None, 1.0]}
    assert report["samples"] == [{"prompt": "提示", "base": "基础", "styled": "风格"}]


def test_predict_summary_and_rows_with_nan_are_strict_json(tmp_path):
    from wuxia_lightning.modules.instruct import write_predictions

    write_predictions(tmp_path, [{"id": 0, "fw_js": NAN}], {"perplexity": INF, "fw_js": NAN}, overwrite=False)
    assert strict_loads((tmp_path / "summary.json").read_text(encoding="utf-8")) == {"perplexity": None,
                                                                                     "fw_js": None}
    rows = [strict_loads(line) for line in (tmp_path / "predictions.jsonl").read_text("utf-8").splitlines()]
    assert rows == [{"id": 0, "fw_js": None}]


def test_llamafactory_json_writers_with_nan_are_strict_json(tmp_path):
    train_llamafactory = load_script("train_llamafactory")
    train_llamafactory.write_json(tmp_path / "info.json", {"a": {"b": NAN}})
    train_llamafactory.write_jsonl(tmp_path / "rows.jsonl", [{"x": -INF}, {"x": 1.0}])
    assert strict_loads((tmp_path / "info.json").read_text(encoding="utf-8")) == {"a": {"b": None}}
    lines = (tmp_path / "rows.jsonl").read_text(encoding="utf-8").splitlines()
    assert [strict_loads(line) for line in lines] == [{"x": None}, {"x": 1.0}]
