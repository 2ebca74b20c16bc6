"""The prepared GPU check in its smallest form (``--device cpu``): it runs end to end through the loss
comparison, ``wuxia fit`` and HF Trainer + peft, and writes what it promises. Numbers are not judged
here (benchmarks print them); the losses are, where the three implementations must agree."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def check_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_writes_json_and_markdown_marked_reduced_and_prints_the_table(check_output):
    out, stdout = check_output
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["device"] == "cpu" and result["mode"].startswith("REDUCED")
    table = (out / "gpu_check.md").read_text()
    assert "| loss | ours (fused) |" in table and "| training | wuxia fit β=0.1 |" in table and table in stdout
    configs = {(row["section"], row["config"]) for row in result["rows"]}
    assert {("training", "wuxia fit β=0"), ("training", "wuxia fit β=0.1"),
            ("training", "HF Trainer + peft β=0")} <= configs


def test_losses_agree_and_training_rows_measured(check_output):
    out, _ = check_output
    rows = json.loads((out / "gpu_check.json").read_text())["rows"]
    for size in {row["rows"] for row in rows if row["section"] == "loss"}:
        values = {row["config"]: row["loss"] for row in rows if row.get("rows") == size and "loss" in row}
        assert values["ours (fused)"] == pytest.approx(values["naive (full logits)"], rel=1e-4)
        if "Liger FusedLinearJSDLoss" in values:  # same objective: CE + β·KL(student ‖ teacher)
            assert values["Liger FusedLinearJSDLoss"] == pytest.approx(values["naive (full logits)"], rel=1e-3)
    training = [row for row in rows if row["section"] == "training"]
    assert all(row["tokens_per_s"] > 0 and row["steps"] >= 3 for row in training)


def test_refuses_to_overwrite_a_result(check_output):
    out, _ = check_output
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "exists" in done.stderr
