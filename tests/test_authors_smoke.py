"""The per-author replication (benchmarks/replication/authors.py) end to end on the shipped sample data with a
tiny base and tiny budgets: every adapter trained, every model's continuations scored, the report written."""

from __future__ import annotations

import json
import sys

from conftest import REPO, strict_loads

sys.path.insert(0, str(REPO / "benchmarks" / "replication"))

SAMPLE = REPO / "data" / "sample"
AUTHORS = ["01_hanjiang_jian", "02_yanyu_lou"]  # a sample file that no table names is its own author class


def test_smoke_run_scores_every_adapter_and_resumes(tmp_path):
    import authors  # benchmarks/replication/authors.py

    out, published = tmp_path / "authors", tmp_path / "docs"
    args = ["--out", str(out), "--smoke", "--base", "tiny", "--authors", *AUTHORS, "--publish", str(published),
            "--style-train", str(SAMPLE / "style"), "--general-train", str(SAMPLE / "general"),
            "--instruct-train", str(SAMPLE / "instruct" / "train.jsonl")]
    # --only does a share of the work and reports nothing; the full run below reuses it.
    partial = authors.main([*args, "--only", AUTHORS[0]])
    assert list(partial["trained"]) == [AUTHORS[0]] and not (out / "results.json").exists()
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["base_model.json", f"continue_{AUTHORS[0]}.json",
                                                                  f"train_{AUTHORS[0]}.json"]
    results = authors.main(args)
    saved = strict_loads((published / "results.json").read_text(encoding="utf-8"))
    assert list(saved["adapters"]) == [*AUTHORS, authors.MIXED]
    prompts = saved["prompts"]
    assert {p["group"] for p in prompts} == {*(f"openings_{a}" for a in AUTHORS), authors.NEUTRAL}
    for name, row in saved["adapters"].items():
        assert set(row) >= {"own_author_rate", "delta_nearest", "rate_by_author", "attribution", "by_group", "met"}
        assert row["delta_nearest"] in saved["classifier"]["classes"]
        assert sum(row["attribution"].values()) == 1.0 or row["n"] == 0
        assert len(saved["continuations"][name]) == len(prompts) == row["n"]
        if name == authors.MIXED:
            assert row["target_author"] is None and row["own_author_rate"] is None
        else:
            assert row["target_author"] == name and 0.0 <= row["own_author_rate"] <= 1.0
            assert set(row["by_group"]) == {p["group"] for p in prompts}
            assert row["own_author_rate"] == row["rate_by_author"][name]  # the rate is its own author's share
    assert set(saved["base"]["rate_by_author"]) == set(AUTHORS) and saved["base"]["own_author_rate"] is None
    # Openings come from the author's held-out chapters only: none occurs in a chapter its adapter trained on.
    from wuxia_lightning.data.corpus import read_corpus, split_train_val

    for author in AUTHORS:
        documents, _ = read_corpus(str(SAMPLE / "style" / f"{author}.txt"), to_simplified=True)
        trained, _ = split_train_val(documents, 0.05, seed=0)
        openings = [p["prompt"] for p in prompts if p["group"] == f"openings_{author}"]
        assert openings and not any(o in d.text for o in openings for d in trained)
    assert isinstance(saved["openings_in_mixed_training"], int)
    readme = (published / "README.md").read_text(encoding="utf-8")
    for heading in ("## Targets", "## Attribution, all prompts", "## Burrows's Delta", "## Continuations side by side"):
        assert heading in readme
    # Resumable: a second run reuses every finished step and gives the same numbers.
    steps = sorted(p.name for p in (out / "steps").iterdir())
    again = authors.main(args)
    assert sorted(p.name for p in (out / "steps").iterdir()) == steps
    assert again["adapters"] == json.loads(json.dumps(results["adapters"]))
