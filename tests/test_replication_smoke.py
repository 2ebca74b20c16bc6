"""The replication pipeline end to end on the shipped sample data with tiny budgets: every table and plot."""

from __future__ import annotations

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks" / "replication"))

SAMPLE = REPO / "data" / "sample"


def test_smoke_run_writes_every_table_plot_and_key(tmp_path):
    import run  # benchmarks/replication/run.py
    from render import PLOTS

    out = tmp_path / "replication"
    args = ["--out", str(out), "--smoke", "--style-train", str(SAMPLE / "style"),
            "--general-train", str(SAMPLE / "general"), "--instruct-train", str(SAMPLE / "instruct" / "train.jsonl"),
            "--instruct-heldout", str(SAMPLE / "instruct" / "val.jsonl")]
    results = run.main(args)
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["chosen_beta"] == results["chosen_beta"] in run.BETAS
    assert set(saved["base"]) >= {"style_ppl", "general_ppl", "p_style", "fw_js"}
    assert [r["beta"] for r in saved["stage1"]] == list(run.BETAS)
    for row in saved["stage1"]:
        assert set(row) >= {"style_ppl", "general_ppl", "kl_general", "p_style", "fw_js"}
    assert len(saved["masking"]) == len(run.MASKING_MIXES)
    assert set(saved["classifier"]) >= {"accuracy", "n_train", "n_test"}
    assert [r["variant"] for r in saved["stage2"]] == list(run.STAGE2_VARIANTS)
    for row in saved["stage2"]:
        assert set(row) >= {"stop_rate", "continues_dialogue_rate", "p_style", "fw_js", "distinct_2", "rouge_l",
                            "style_ppl"}
    assert saved["chosen_variant"] in run.STAGE2_VARIANTS and saved["wall_s"] > 0
    readme = (out / "README.md").read_text(encoding="utf-8")
    for heading in ("## Findings", "## Stage 1: β sweep", "## Masking ablation", "## Stage 2 variants"):
        assert heading in readme
    for plot in PLOTS:
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({plot})" in readme
    # The base is plain causal LM on general text only, and its tokenizer never splits a character.
    tokenizer_vocab = json.loads((out / "models" / "base" / "tokenizer.json").read_text(encoding="utf-8"))
    assert tokenizer_vocab["model"]["type"] == "WordLevel"
    # Resumable: a second run reuses every finished step.
    steps = sorted(p.name for p in (out / "steps").iterdir())
    again = run.main(args)
    assert sorted(p.name for p in (out / "steps").iterdir()) == steps
    assert again["stage2"] == results["stage2"]
