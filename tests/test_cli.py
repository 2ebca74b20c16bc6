"""The command line end to end: every config parses; stage 1 fits offline and writes a peft adapter."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import NOISE, QWEN_TOKENIZER, REPO, SHARED, require_shared

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def run_cli(*args: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "wuxia_lightning", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def read_metrics(log_dir: Path) -> list[dict[str, str]]:
    files = sorted(log_dir.rglob("metrics.csv"))
    assert files, f"no metrics.csv under {log_dir}"
    with files[-1].open() as handle:
        return list(csv.DictReader(handle))


def series(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_parses(config, capsys, monkeypatch):
    """Full configs parse alone; overlays (ddp/fsdp/fsdp2/multinode: no model class) on top of the 7B stage-1 config.

    In this process, through the same ``main`` the console script calls: a parse needs no fresh interpreter
    (the end-to-end tests below run the real command), and ten of them would cost ~10 s of imports each."""
    from wuxia_lightning.cli import main

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["wuxia"])  # pytest's own arguments are not the CLI's
    overlay = "class_path" not in (yaml.safe_load(config.read_text()).get("model") or {})  # no model of its own
    base = ["--config", "configs/qwen2.5-7b_style_qlora.yaml"] if overlay else []
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *base, "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    assert "class_path: wuxia_lightning" in capsys.readouterr().out


def stage1_args(tmp_path: Path, *extra: str) -> list[str]:
    """The quickstart config with every output under tmp_path. The config has two loggers: a
    ``--trainer.logger.init_args.save_dir`` alone would move only the last one, so the whole list is
    replaced by one CSVLogger (``extra`` may replace it again)."""
    return ["fit", "--config", "configs/quickstart_style.yaml",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
            f"--model.output_dir={tmp_path / 'style'}", *extra]


PROGRESS_LINE = re.compile(r"^step \d+/\d+ \(epoch \d+\) \| loss [\d.e+-]+ \| [\d,]+ tokens/s \| elapsed \S+ \| ETA \S+$",
                           re.MULTILINE)


def assert_checkpoint_holds_the_adapter_not_the_base(checkpoint: Path, adapter_dir: Path) -> None:
    """A checkpoint is the adapter plus its two AdamW moments (3× the adapter's tensors) and bookkeeping;
    with the frozen base inside it would be at least the base's size more."""
    from safetensors.torch import load_file

    from wuxia_lightning.pretrained.tiny import resolve_model_path

    adapter = sum(t.numel() * 4 for t in load_file(str(adapter_dir / "adapter_model.safetensors")).values())
    base = sum(t.numel() * t.element_size()
               for t in load_file(str(Path(resolve_model_path("tiny-qwen2")) / "model.safetensors")).values())
    size = checkpoint.stat().st_size
    assert 3 * adapter <= size <= 3 * adapter + 200_000, (size, adapter)
    assert size < base + 3 * adapter, (size, base)


def test_quickstart_stage1_fits_and_writes_a_loadable_adapter(tmp_path):
    fitted = run_cli(*stage1_args(tmp_path, "--trainer.max_epochs=4", "--progress.every_n_steps=5"))
    rows = read_metrics(tmp_path / "logs")
    # stdout is a pipe here, as in a job log: plain progress lines, then where the adapter went
    assert len(PROGRESS_LINE.findall(fitted.stdout)) >= 3, fitted.stdout
    assert f"trained model written to {tmp_path / 'style'}" in fitted.stdout
    kl, loss = series(rows, "train/kl"), series(rows, "train/loss")
    assert len(loss) >= 12
    assert all(value > 0 for value in kl[2:])
    assert sum(loss[-4:]) / 4 < sum(loss[:4]) / 4
    assert series(rows, "val_style/ppl") and series(rows, "val_general/ppl")
    assert series(rows, "val_style/ngram_char3") and series(rows, "base/fw_js")  # style scored at validation
    assert series(rows, "val_style/p_style") and series(rows, "base/p_style")  # the classifier (general corpus)
    style_eval = json.loads(next((tmp_path / "logs").rglob("style_eval.json")).read_text())
    assert set(style_eval["rates"]) == {"corpus", "base", "styled"}
    assert len(style_eval["rates"]["corpus"]) == len(style_eval["feature_names"])
    # what ingest found is on the console and in the run folder: encoding per file, conversion, drops
    ingest = json.loads(next((tmp_path / "logs").rglob("ingest_report.json")).read_text())
    encodings = {Path(f["path"]).name: f["encoding"] for f in ingest["files"]}
    assert len(encodings) == 6 and encodings["03_gb18030_xueye.txt"] == "gb18030"
    assert "style corpus, as read" in fitted.stderr + fitted.stdout and "gb18030" in fitted.stderr + fitted.stdout
    # every key the module logged is in the metric registry the report reads (a rename cannot slip by)
    from wuxia_lightning.metrics.registry import lookup

    logged = {key for row in rows for key, value in row.items() if value not in ("", None)} - {"epoch", "step"}
    assert logged and not [key for key in logged if lookup(key) is None]

    # "eval only": validating the last checkpoint restores the adapter exactly (same val perplexity)
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    assert_checkpoint_holds_the_adapter_not_the_base(checkpoint, tmp_path / "style")
    run_cli("validate", "--config", "configs/quickstart_style.yaml", f"--ckpt_path={checkpoint}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'eval'}")
    validated = read_metrics(tmp_path / "eval")
    assert abs(series(validated, "val_style/ppl")[-1] - series(rows, "val_style/ppl")[-1]) < 1e-3

    # without --trainer.logger, validate writes nothing: no log version, no config.yaml, no checkpoint dir
    root = tmp_path / "validate_root"
    result = run_cli("validate", "--config", "configs/quickstart_style.yaml", f"--ckpt_path={checkpoint}",
                     f"--trainer.default_root_dir={root}", "--trainer.limit_val_batches=1")
    assert "val_style/ppl" in result.stdout and not root.exists()
    assert "Checkpoint directory" not in result.stderr and "not logged" in result.stderr

    # resume: training continues from the adapter-only checkpoint (optimizer state included)
    run_cli(*stage1_args(tmp_path, "--trainer.max_epochs=5", f"--ckpt_path={checkpoint}",
                         "--model.overwrite_output=false",
                         f"--trainer.logger.init_args.save_dir={tmp_path / 'resumed'}"))
    resumed = read_metrics(tmp_path / "resumed")
    assert min(int(r["step"]) for r in resumed if r.get("train/loss")) >= len(loss)

    # the run folder turns into a report with plots
    from wuxia_lightning.report import build_report

    report = build_report(next((tmp_path / "logs").rglob("metrics.csv")).parent, out_dir=tmp_path / "report")
    text = report.read_text()
    for png in ("loss.png", "ppl.png", "kl.png", "function_words.png"):
        assert png in text and (tmp_path / "report" / png).stat().st_size > 5_000

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    manifest_base = (tmp_path / "style" / "adapter_config.json").read_text()
    assert "base_model_name_or_path" in manifest_base
    from wuxia_lightning.pretrained.tiny import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-qwen2"))
    model = PeftModel.from_pretrained(base, str(tmp_path / "style"))
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_existing_output_is_not_overwritten_without_being_asked(tmp_path):
    (tmp_path / "style").mkdir()
    (tmp_path / "style" / "precious.txt").write_text("mine")
    result = run_cli(*stage1_args(tmp_path, "--model.overwrite_output=false", "--trainer.max_steps=1"),
                     check=False)
    assert result.returncode == 2
    assert "style" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "style" / "precious.txt").read_text() == "mine"


def test_missing_corpus_is_one_clear_error(tmp_path):
    result = run_cli(*stage1_args(tmp_path, "--data.corpus=no/such/novels"), check=False)
    assert result.returncode == 2
    assert "no/such/novels" in result.stderr and "Traceback" not in result.stderr


def test_stage1_on_a_shared_novel_with_the_real_qwen_tokenizer(tmp_path):
    novel = require_shared(SHARED / "data" / "style" / "sanxia_wuyi.txt")
    require_shared(QWEN_TOKENIZER)
    run_cli(*stage1_args(tmp_path, f"--data.corpus={novel}", f"--model.tokenizer_name_or_path={QWEN_TOKENIZER}",
                         "--trainer.max_steps=6", "--trainer.limit_val_batches=2", "--data.batch_size=2",
                         "--model.loss_chunk_size=256"))
    rows = read_metrics(tmp_path / "logs")
    assert any(value > 0 for value in series(rows, "train/kl"))
    config = (tmp_path / "style" / "adapter_config.json").read_text()
    assert "qwen-tok" in config  # the tiny model built around the real Qwen tokenizer
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "style"))) == 151665


def test_stage2_after_stage1_replies_stop_and_never_start_a_new_turn(tmp_path):
    """Stage 1 → stacked stage 2 fitted to the ~24 sample dialogues → predict on their prompts."""
    run_cli(*stage1_args(tmp_path, "--trainer.max_epochs=2", "--trainer.logger=false"))
    stacked = tmp_path / "stacked"
    common = ["--config", "configs/quickstart_instruct.yaml", f"--model.style_adapter={tmp_path / 'style'}",
              f"--model.output_dir={stacked}", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    fitted = run_cli("fit", *common)
    predicted = run_cli("predict", *common, "--data.prompts=data/sample/instruct/train.jsonl")
    for result in (fitted, predicted):  # output to a pipe, as in a job log: no third-party noise
        printed = result.stdout + result.stderr
        assert [noise for noise in NOISE if noise in printed] == [], printed[-3000:]
        assert "Loading weights" not in printed and "Writing model shards" not in printed  # transformers' bars
    assert f"wrote {stacked / 'predictions.jsonl'}" in predicted.stdout  # says where the replies are
    assert f"wrote {stacked / 'summary.json'}" in predicted.stdout
    rows = [json.loads(line) for line in (stacked / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(row["prompt"] and "generation" in row for row in rows)
    stop_rate = sum(row["stopped"] for row in rows) / len(rows)
    assert stop_rate >= 0.95
    assert not any(row["continues_dialogue"] or "<|im_start|>" in row["generation"] for row in rows)
    assert not [row["generation"] for row in rows if "\ufffd" in row["generation"]]  # no half characters
    summary = json.loads((stacked / "summary.json").read_text())
    assert summary["stop_rate"] == stop_rate
    assert 0.0 <= summary["ngram_char3"] <= 1.0 and "fw_js" in summary  # replies scored for style
    assert 0.0 <= summary["p_style"] <= 1.0  # the style classifier (config: eval_general_corpus)
    assert all("ngram_char2" in row and "distinct_2" in row and 0.0 <= row["p_style"] <= 1.0 for row in rows)
    assert summary["p_style"] == pytest.approx(sum(row["p_style"] for row in rows) / len(rows))

    # scripts/inference.py with no --preset uses the one the folder was trained with, and the reply stops
    chat = subprocess.run([sys.executable, "scripts/inference.py", "--model", str(stacked), "--greedy",
                           "--prompt", rows[0]["prompt"]], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert "as in training" in chat.stderr and "stopped at --max-new-tokens" not in chat.stderr
    assert chat.stdout.strip() and "\ufffd" not in chat.stdout


def test_stage1_ddp_on_two_cpu_processes(tmp_path):
    """The real distributed path: Lightning DDP, gloo, 2 ranks, each with its own shard of windows."""
    run_cli(*stage1_args(tmp_path, "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_epochs=2"))
    rows = read_metrics(tmp_path / "logs")
    assert series(rows, "train/loss") and series(rows, "val_style/ppl")
    assert (tmp_path / "style" / "adapter_model.safetensors").exists()


def test_evaluating_logs_only_when_the_command_line_asks():
    from wuxia_lightning.cli import without_config_loggers

    for subcommand in ("validate", "test", "predict"):
        assert without_config_loggers([subcommand, "--config", "c.yaml"]) == [
            subcommand, "--config", "c.yaml", "--trainer.logger=false"]
    assert without_config_loggers(["fit", "--config", "c.yaml"]) == ["fit", "--config", "c.yaml"]
    asked = ["validate", "--config", "c.yaml", "--trainer.logger=lightning.pytorch.loggers.CSVLogger"]
    assert without_config_loggers(asked) == asked


def test_a_config_key_that_does_not_exist_is_named(tmp_path):
    result = run_cli(*stage1_args(tmp_path, "--model.no_such_key=3"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'no_such_key' is not accepted" in result.stderr
    assert not (tmp_path / "style").exists()
