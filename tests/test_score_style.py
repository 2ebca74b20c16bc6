"""scripts/score_style.py end to end on real held-out chapters, the pairwise round trip, bad input, and the
author-LM cross-entropy on a tiny real model."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from conftest import REPO, load_script, require_shared, strict_loads
from test_authorship import GENERAL_DIR, STYLE, TEST_SETTINGS, author_texts  # noqa: F401 (a shared fixture)

from wuxia_lightning.metrics.authorship import AuthorshipModel, passages
from wuxia_lightning.modeling.adapters import lora_config, save_adapter_atomically
from wuxia_lightning.modeling.loading import load_base_model
from wuxia_lightning.pretrained.tokenizer import load_tokenizer
from wuxia_lightning.scorecard.author_lm import cross_entropy_vs_base
from wuxia_lightning.scorecard.pairwise import KEY, SHEET_HTML, SHEET_MD, TEMPLATE, preference

A, B = "shuihu_like", "modern"


@pytest.fixture(scope="module")
def model() -> AuthorshipModel:
    return AuthorshipModel.load_or_fit(str(require_shared(STYLE)), str(require_shared(GENERAL_DIR)), TEST_SETTINGS)


@pytest.fixture(scope="module")
def generations(tmp_path_factory, author_texts) -> str:  # noqa: F811 (the imported fixture)
    """Held-out passages as 'replies': 施耐庵's (target 施耐庵, four of six stopped) and Wikipedia's
    (target also 施耐庵, so its target rate should be near 0). Prompts are shared for the pairwise sheet."""
    novel = passages({"x": author_texts.heldout["shi_naian"]}, 200, 6, 0)[0]
    modern = passages({"x": author_texts.heldout["general"]}, 200, 6, 0)[0]
    rows = [{"prompt": f"题{i}", "reply": r, "variant": A, "target_author": "施耐庵", "stopped": i < 4}
            for i, r in enumerate(novel)]
    rows += [{"prompt": f"题{i}", "generation": r, "variant": B, "target_author": "shi_naian"}
             for i, r in enumerate(modern)]
    path = tmp_path_factory.mktemp("generations") / "generations.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def style_folder(tiny_model_dir, out, std: float):
    """A stage-1 output folder; LoRA B ~ N(0, std) (std 0: the adapter changes nothing)."""
    from peft import get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(load_base_model(str(tiny_model_dir)), lora_config(8, 16, 0.0), adapter_name="style")
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=std) if std else param.zero_()
    save_adapter_atomically(peft_model, "style", out, load_tokenizer(str(tiny_model_dir)),
                            {"stage": "style", "adapters": ["style"], "base_model": str(tiny_model_dir)})
    return out


@pytest.fixture(scope="module")
def trained_folder(tiny_model_dir, tmp_path_factory):
    return style_folder(tiny_model_dir, tmp_path_factory.mktemp("stage1") / "style", 0.2)


def score(argv: list[str]) -> int:
    return load_script("score_style").main([*argv, "--passages", str(TEST_SETTINGS.max_passages)])


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_scorecard_of_real_held_out_passages(model, generations, trained_folder, tmp_path, capsys):
    out = tmp_path / "card"
    assert score([generations, "--out", str(out), "--model", str(trained_folder)]) == 0
    printed = capsys.readouterr().out
    card = strict_loads((out / "scorecard.json").read_text(encoding="utf-8"))
    assert card["classifier"]["heldout_accuracy"] == pytest.approx(model.heldout.accuracy)
    assert card["classifier"]["classes"] == model.classes
    assert list(card["variants"]) == [A, B] and A in printed and B in printed
    for row in card["variants"].values():
        assert set(row) >= {"attribution", "target_rate", "delta_nearest", "ce_vs_base", "stop_rate", "distinct_2"}
        assert set(row["attribution"]) == set(model.classes)
        assert sum(row["attribution"].values()) == pytest.approx(1.0)
        assert math.isfinite(row["ce_vs_base"]) and row["ce_vs_base"] != 0  # random LoRA B changes the loss
        assert 0 < row["distinct_2"] <= 1 and row["repeat_10gram_rate"] == 0  # real prose does not loop
    novel, modern = card["variants"][A], card["variants"][B]
    assert novel["target_author"] == "shi_naian" and novel["target_rate"] >= 0.8
    assert novel["delta_nearest"] == "shi_naian" and modern["delta_nearest"] == "general"
    assert modern["attribution"]["general"] >= 0.8 and modern["target_rate"] <= 0.2
    assert novel["stop_rate"] == pytest.approx(4 / 6) and modern["stop_rate"] is None
    assert novel["mean_length"] == 200
    for name in ("scorecard.md", "scorecard_confusion.png", "scorecard_attribution.png"):
        assert (out / name).stat().st_size > 0


def test_pairwise_sheet_is_blind_and_its_key_round_trips(model, generations, tmp_path, capsys):
    out = tmp_path / "card"
    assert score([generations, "--out", str(out), "--pairwise", A, B, "--n", "5", "--seed", "3"]) == 0
    key = json.loads((out / KEY).read_text(encoding="utf-8"))
    assert key["variants"] == [A, B] and [i["item"] for i in key["items"]] == [1, 2, 3, 4, 5]
    assert {i["first"] for i in key["items"]} == {A, B}  # the order really is shuffled (seed 3)
    for sheet in (SHEET_MD, SHEET_HTML):
        text = (out / sheet).read_text(encoding="utf-8")
        assert A not in text and B not in text and text.count("Reply 1") == 5
    # The reader prefers A on items 1-4 and calls item 5 a tie: A wins 4, ties 1.
    lines = ["item,choice"] + [f"{i['item']},{1 if i['first'] == A else 2}" for i in key["items"][:4]] + ["5,tie"]
    filled = tmp_path / "filled.csv"
    filled.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert (out / TEMPLATE).read_text(encoding="utf-8").startswith("item,choice\n1,\n")
    capsys.readouterr()
    assert load_script("score_style").main(["--judgements", str(filled), "--out", str(out)]) == 0
    result = json.loads((out / "pairwise_result.json").read_text(encoding="utf-8"))
    assert (result["wins_a"], result["wins_b"], result["ties"], result["n"]) == (4, 0, 1, 5)
    assert result["preference_a"] == pytest.approx(0.9) and result["odds_ratio"] == pytest.approx(9.0)
    assert f"{A} preferred over {B}: 0.900" in capsys.readouterr().out


def test_wilson_interval_and_odds_ratio_match_published_values():
    eight_of_ten = preference(8, 2, 0)  # Wilson 95% for 8/10: 0.490–0.943 (Newcombe 1998, Table I style)
    assert eight_of_ten["ci95"] == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert eight_of_ten["odds_ratio"] == pytest.approx(4.0)
    assert preference(3, 1, 2)["preference_a"] == pytest.approx(4 / 6)  # ties count half each
    never = preference(0, 10, 0)
    assert never["ci95"][0] == 0 and never["odds_ratio"] == pytest.approx(0.5 / 10.5)  # Haldane–Anscombe


def test_cross_entropy_is_zero_for_a_no_op_adapter_and_matches_the_models_own_loss(tiny_model_dir, tmp_path):
    from peft import PeftModel

    replies = {"v": ["剑光一闪，那人已然倒地。", "老者抚须笑道：少侠何必如此？"]}
    no_op = cross_entropy_vs_base(style_folder(tiny_model_dir, tmp_path / "zero", 0.0), replies)["v"]
    assert no_op["ce_vs_base"] == pytest.approx(0.0, abs=1e-6) and no_op["ce_base"] > 0
    folder = style_folder(tiny_model_dir, tmp_path / "random", 0.2)
    scores = cross_entropy_vs_base(folder, replies)["v"]
    # The same numbers through transformers' own loss (mean over predicted tokens), model by model.
    tokenizer = load_tokenizer(str(tiny_model_dir))
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    base = load_base_model(str(tiny_model_dir)).eval()
    styled = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir)), str(folder)).eval()
    characters = sum(len(t) for t in replies["v"])
    for key, network in (("ce_base", base), ("ce_style", styled)):
        total = 0.0
        for text in replies["v"]:
            ids = torch.tensor([[start, *tokenizer(text, add_special_tokens=False)["input_ids"]]])
            with torch.no_grad():
                total += float(network(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
        assert scores[key] == pytest.approx(total / characters, rel=1e-4)
    assert scores["ce_vs_base"] == pytest.approx(scores["ce_style"] - scores["ce_base"])


# ---------------------------------------------------------------------------------------------- bad input
def lines_of(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)


GOOD = {"prompt": "问", "reply": "答", "variant": "v"}
BAD_FILES = {
    "missing_field": (lines_of(GOOD, {"prompt": "问", "variant": "v"}, *[GOOD] * 4), ":2 field 'reply'"),
    "not_json": (lines_of(GOOD, GOOD, "{oops", *[GOOD] * 3), ":3: not valid JSON"),
    "empty": ("\n\n", ": empty"),
    "unknown_author": (lines_of(*[GOOD] * 3, {**GOOD, "target_author": "金庸"}, GOOD), ":4 field 'target_author'"),
    "too_few": (lines_of(*[GOOD] * 5, {**GOOD, "variant": "w"}), ":6: variant 'w' has 1 replies"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_generations_file_is_one_line_exit_2_and_nothing_written(case, tmp_path, capsys):
    require_shared(STYLE)
    text, expected = BAD_FILES[case]
    path = tmp_path / "gen.jsonl"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    assert score([str(path), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{path}{expected}" in line, line
    assert not out.exists()


def test_existing_scorecard_is_not_replaced_without_overwrite(tmp_path, capsys):
    require_shared(STYLE)
    path = tmp_path / "gen.jsonl"
    path.write_text(lines_of(*[GOOD] * 5), encoding="utf-8")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "scorecard.json").write_text("{}", encoding="utf-8")
    assert score([str(path), "--out", str(tmp_path / "out")]) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["scorecard.json"]


def test_bad_judgement_names_file_and_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / KEY).write_text(json.dumps({"variants": [A, B], "items": [{"item": 1, "prompt": "p", "first": A,
                                                                       "second": B}]}), encoding="utf-8")
    filled = tmp_path / "filled.csv"
    filled.write_text("item,choice\n1,3\n", encoding="utf-8")
    assert load_script("score_style").main(["--judgements", str(filled), "--out", str(out)]) == 2
    assert f"{filled}:2: choice '3'" in one_error_line(capsys.readouterr().err)
    assert [p.name for p in out.iterdir()] == [KEY]


# ---------------------------------------------------------------------------------------------- replication
def test_replication_stage2_replies_get_a_scorecard_section(model, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks" / "replication"))
    from render import render
    from scorecard import replication_records, score_replication

    results = json.loads((REPO / "docs" / "replication" / "gemma3-270m" / "results.json").read_text("utf-8"))
    results.pop("scorecard", None)
    card = score_replication(results, "", "", model=model)
    variants = [r["variant"] for r in results["stage2"]] + ["base"]
    assert list(card["variants"]) == variants
    assert sum(v["n"] for v in card["variants"].values()) == len(replication_records(results)) == 50
    assert [card["variants"][r["variant"]]["stop_rate"] for r in results["stage2"]] == \
        [r["stop_rate"] for r in results["stage2"]]
    render({**results, "scorecard": card}, tmp_path)
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "## Style scorecard of the stage-2 replies" in readme and "| stacked_replay |" in readme
    assert (tmp_path / "scorecard_attribution.png").exists()
