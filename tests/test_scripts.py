"""The user-facing scripts in scripts/, run in-process through their ``main(argv)`` on real models and data."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO, load_script

from wuxia_lightning.data.presets import resolve_system_prompt
from wuxia_lightning.generation import GenerationSettings, generate_replies
from wuxia_lightning.modeling.loading import load_base_model
from wuxia_lightning.modeling.stacking import load_stacked
from wuxia_lightning.pretrained.tokenizer import load_tokenizer

SAMPLE_STYLE = REPO / "data" / "sample" / "style"
SAMPLE_INSTRUCT = REPO / "data" / "sample" / "instruct"
IM_START = "<|im_start|>"


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ inference

def test_inference_one_shot_prints_the_stacked_models_reply(stacked_folder, capsys):
    code = load_script("inference").main(["--model", str(stacked_folder), "--prompt", "你好", "--greedy",
                                     "--max-new-tokens", "12"])
    out, err = capsys.readouterr()
    assert code == 0, err
    # The same reply as the library gives: both adapters active, the default preset as system prompt.
    model, tokenizer = load_stacked(stacked_folder)
    messages = [{"role": "system", "content": resolve_system_prompt("elegant_style")},
                {"role": "user", "content": "你好"}]
    expected = generate_replies(model, tokenizer, [messages], GenerationSettings(max_new_tokens=12))[0]
    assert out.strip() == expected.generation and out.strip()
    assert IM_START not in out
    assert "instruct" in err  # the banner names the adapters
    assert "preset: elegant_style (default" in err  # this manifest records no training preset
    assert "/reset" not in err and "/exit" not in err  # one reply, no chat loop: no chat commands


def test_inference_defaults_to_the_preset_recorded_in_the_manifest(stacked_folder, tmp_path, capsys,
                                                                      monkeypatch):
    import shutil

    import wuxia_lightning.generation as generation

    folder = tmp_path / "stacked"
    shutil.copytree(stacked_folder, folder)
    manifest = json.loads((folder / "wuxia_manifest.json").read_text(encoding="utf-8"))
    manifest["data"] = {"preset": "wuxia", "presets_file": None}  # the data module's settings at training
    (folder / "wuxia_manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    seen: list[list[dict]] = []
    real_generate = generation.generate_replies

    def recording_generate(model, tokenizer, conversations, settings, **kwargs):
        seen.extend(conversations)
        return real_generate(model, tokenizer, conversations, settings, **kwargs)

    monkeypatch.setattr(generation, "generate_replies", recording_generate)
    args = ["--model", str(folder), "--prompt", "你好", "--greedy", "--max-new-tokens", "4"]
    assert load_script("inference").main(args) == 0
    assert seen[-1][0] == {"role": "system", "content": resolve_system_prompt("wuxia")}
    assert "preset: wuxia (as in training" in capsys.readouterr().err

    assert load_script("inference").main([*args, "--preset", "plain"]) == 0  # the flag still wins
    assert seen[-1][0]["content"] == resolve_system_prompt("plain") != resolve_system_prompt("wuxia")
    assert "preset: plain (--preset)" in capsys.readouterr().err


def test_inference_chat_loop_keeps_history_resets_and_exits(stacked_folder, capsys, monkeypatch):
    import wuxia_lightning.generation as generation

    seen: list[list[dict]] = []
    real_stream = generation.stream_reply

    def recording_stream(model, tokenizer, messages, settings):  # the real streamer, recording its input
        seen.append([dict(m) for m in messages])
        yield from real_stream(model, tokenizer, messages, settings)

    monkeypatch.setattr(generation, "stream_reply", recording_stream)
    monkeypatch.setattr(sys, "stdin", io.StringIO("你好\n再说一句\n/reset\n第三句\n/exit\n不该处理\n"))
    code = load_script("inference").main(["--model", str(stacked_folder), "--greedy", "--max-new-tokens", "8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [[m["role"] for m in conv] for conv in seen] == [
        ["system", "user"], ["system", "user", "assistant", "user"], ["system", "user"]]
    assert seen[0][0]["content"] == resolve_system_prompt("elegant_style")  # the default preset
    assert seen[2][1]["content"] == "第三句"
    assert "(history cleared)" in out and "不该处理" not in out
    assert "/reset clears the history" in err  # the chat loop explains its commands
    replies = [line[len("答> "):] for line in out.splitlines() if line.startswith("答> ")]
    # three turns answered (a reply may be empty: this random tiny model can end its turn at once)
    assert len(replies) == 3
    assert seen[1][2]["content"] == replies[0].strip()  # the streamed reply is what the history keeps
    assert IM_START not in out


def test_generation_decodes_with_a_kv_cache_on_a_model_loaded_for_training(tiny_model_dir):
    """load_base_model turns the config's cache off (training); generation must still decode one new
    position per step (with a cache), not recompute the whole sequence for every token, and give the
    same tokens as a cache-free decode."""
    model = load_base_model(str(tiny_model_dir)).eval()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert model.config.use_cache is False
    lengths: list[int] = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1]))
    settings = GenerationSettings(max_new_tokens=6, do_sample=False, repetition_penalty=1.0)
    conversation = [[{"role": "user", "content": "剑光一闪，"}]]
    try:
        cached = generate_replies(model, tokenizer, conversation, settings, raw_prompts=True)
    finally:
        hook.remove()
    assert len(lengths) == cached[0].new_tokens and lengths[0] > 1 and set(lengths[1:]) <= {1}
    plain = settings.kwargs()
    uncached = GenerationSettings(max_new_tokens=6, do_sample=False, repetition_penalty=1.0)
    uncached.kwargs = lambda: {**plain, "use_cache": False}
    assert generate_replies(model, tokenizer, conversation, uncached, raw_prompts=True) == cached


def test_inference_stage1_folder_is_a_raw_continuation_model(style_folder, capsys, monkeypatch):
    inference = load_script("inference")
    code = inference.main(["--model", str(style_folder), "--prompt", "剑光一闪", "--greedy",
                           "--max-new-tokens", "10"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "continuation model" in err
    model, tokenizer = load_stacked(style_folder)
    raw = generate_replies(model, tokenizer, [[{"role": "user", "content": "剑光一闪"}]],
                           GenerationSettings(max_new_tokens=10), raw_prompts=True)[0]
    assert out.strip() == raw.generation

    monkeypatch.setattr(sys, "stdin", io.StringIO("剑光一闪\n"))  # EOF ends the loop
    assert inference.main(["--model", str(style_folder), "--greedy", "--max-new-tokens", "10"]) == 0
    out, _ = capsys.readouterr()
    assert out.rsplit("答> ", 1)[-1].strip() == raw.generation  # streamed text == the batch generation


def test_inference_user_errors_are_one_line_exit_2(stacked_folder, tmp_path, capsys):
    inference = load_script("inference")
    assert inference.main(["--model", str(tmp_path), "--prompt", "x"]) == 2
    assert "wuxia_manifest.json" in one_error_line(capsys.readouterr().err)
    assert inference.main(["--model", str(stacked_folder), "--preset", "no_such", "--prompt", "x"]) == 2
    assert "elegant_style" in one_error_line(capsys.readouterr().err)
    assert inference.main(["--model", str(stacked_folder), "--base", str(tmp_path / "missing"),
                           "--prompt", "x"]) == 2
    assert "--base" in one_error_line(capsys.readouterr().err)
    assert inference.main(["--model", str(stacked_folder), "--temperature", "0", "--prompt", "x"]) == 2
    assert "--greedy" in one_error_line(capsys.readouterr().err)
    assert inference.main(["--list-presets"]) == 0
    assert "elegant_style:" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ check_gpu

def test_check_gpu_json_reports_this_machine_and_a_working_4bit_layer(capsys):
    check_gpu = load_script("check_gpu")
    assert check_gpu.main(["--json", "--test", "--size", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["torch"] == torch.__version__
    assert report["cuda_available"] is torch.cuda.is_available()
    assert len(report["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    # What was measured, not how fast: on a busy machine a 64² matmul can round to 0.0 GFLOP/s.
    assert [b["dtype"] for b in report["benchmark"]] == (
        ["float32", "bfloat16", "float16"] if torch.cuda.is_available() else ["float32", "bfloat16"])
    assert all(b["size"] == 64 and b["device"] == report["best_device"] for b in report["benchmark"])
    assert all(b["gflops"] >= 0 and b["seconds"] >= 0 for b in report["benchmark"])  # NaN fails both
    pytest.importorskip("bitsandbytes")
    check = report["bitsandbytes"]["linear4bit"]
    assert check["ok"] and check["quantised"] and 0 < check["relative_error"] < check_gpu.MAX_4BIT_REL_ERROR


def test_check_gpu_gflops_is_two_n_cubed_per_repeat_over_the_measured_seconds(monkeypatch):
    check_gpu = load_script("check_gpu")
    ticks = iter([100.0, 100.004])  # the clock before and after the timed loop: 4 ms
    monkeypatch.setattr(check_gpu, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    result = check_gpu.timed_matmul("cpu", 100, torch.float32, repeats=5)
    assert result["gflops"] == pytest.approx(2 * 100 ** 3 * 5 / 0.004 / 1e9, abs=0.05)  # 2.5
    assert result["seconds"] == pytest.approx(0.004) and result["dtype"] == "float32"


def test_check_gpu_table_says_when_there_is_no_cuda(capsys):
    assert load_script("check_gpu").main([]) == 0
    table = capsys.readouterr().out
    assert "torch" in table and "4-bit nf4 Linear4bit" in table
    if not torch.cuda.is_available():
        assert "CUDA available" in table and "no (CPU only)" in table


# ----------------------------------------------------------------------------------------- setup_data

def test_setup_data_writes_utf8_copies_and_refuses_to_overwrite(tmp_path, capsys):
    from wuxia_lightning.sources import to_simplified_chinese

    setup_data = load_script("setup_data")
    out = tmp_path / "novels"
    assert setup_data.main([str(SAMPLE_STYLE), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "gb18030" in report and "03_gb18030_xueye.txt" in report and "total" in report
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name for p in SAMPLE_STYLE.glob("*.txt"))
    original = (SAMPLE_STYLE / "03_gb18030_xueye.txt").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        original.decode("utf-8")
    converted = (out / "03_gb18030_xueye.txt").read_text(encoding="utf-8")
    assert converted.splitlines()[0] == original.decode("gb18030").splitlines()[0].strip()
    assert converted.count("\n\n") == 3  # four chapters, a blank line between each

    before = converted
    assert setup_data.main([str(SAMPLE_STYLE), "--out", str(out), "--to-simplified"]) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err)
    assert (out / "03_gb18030_xueye.txt").read_text(encoding="utf-8") == before

    assert setup_data.main([str(SAMPLE_STYLE), "--out", str(out), "--to-simplified", "--overwrite"]) == 0
    simplified = (out / "04_fanti_guyue.txt").read_text(encoding="utf-8")
    assert simplified == to_simplified_chinese(simplified)
    assert simplified != (SAMPLE_STYLE / "04_fanti_guyue.txt").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------- download_model

def test_download_model_offline_fails_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert load_script("download_model").main(["--model", "Qwen/Qwen2.5-7B", "--out", str(tmp_path / "m")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Qwen/Qwen2.5-7B" in line and "https://huggingface.co" in line and "--use-mirror" in line


def test_download_model_unreachable_endpoint_fails_cleanly(tmp_path, monkeypatch, capsys):
    with socket.socket() as probe:  # a port nobody listens on: connection refused, no internet needed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    endpoint = f"http://127.0.0.1:{port}"
    assert load_script("download_model").main(["--model", "Qwen/Qwen2.5-0.5B", "--out", str(tmp_path / "m"),
                                          "--endpoint", endpoint]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Qwen/Qwen2.5-0.5B" in line and endpoint in line
    assert not (tmp_path / "m").exists()


def test_download_model_mirror_sets_the_endpoint(tmp_path, monkeypatch, capsys):
    download_model = load_script("download_model")
    assert download_model.hub_environment(True, environ={})["HF_ENDPOINT"] == "https://hf-mirror.com"
    assert download_model.hub_environment(False, environ={"HF_ENDPOINT": "https://x.org"})["HF_ENDPOINT"] == \
        "https://x.org"
    assert "HF_ENDPOINT" not in download_model.hub_environment(False, environ={"PATH": "/bin"})
    assert download_model.hub_environment(True, "https://m.example/", {})["HF_ENDPOINT"] == "https://m.example"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert download_model.main(["--model", "Qwen/Qwen2.5-7B", "--out", str(tmp_path), "--use-mirror"]) == 2
    assert os.environ["HF_ENDPOINT"] == "https://hf-mirror.com"  # set before huggingface_hub is used
    assert "hf-mirror.com" in one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------- train_llamafactory

# LLaMA-Factory's own arguments (model / data / finetuning), which its parser takes besides TrainingArguments.
LLAMAFACTORY_ONLY_KEYS = {"model_name_or_path", "adapter_name_or_path", "create_new_adapter", "stage",
                          "finetuning_type", "lora_rank", "lora_alpha", "lora_dropout", "lora_target",
                          "dataset_dir", "dataset", "template", "cutoff_len", "preprocessing_num_workers",
                          "quantization_bit", "quantization_type", "double_quantization", "plot_loss",
                          "val_size"}
LLAMAFACTORY_TRAINING_KEYS = ["output_dir", "logging_steps", "save_steps", "plot_loss", "report_to",
                              "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                              "num_train_epochs", "lr_scheduler_type", "warmup_steps", "bf16", "max_grad_norm",
                              "val_size", "per_device_eval_batch_size", "eval_strategy", "eval_steps"]
LLAMAFACTORY_STAGE1_KEYS = ["model_name_or_path", "stage", "do_train", "finetuning_type", "lora_rank", "lora_alpha",
                            "lora_dropout", "lora_target", "dataset_dir", "dataset", "template", "cutoff_len",
                            "preprocessing_num_workers", "quantization_bit", "quantization_type",
                            "double_quantization", *LLAMAFACTORY_TRAINING_KEYS]
LLAMAFACTORY_STAGE2_KEYS = ["model_name_or_path", "adapter_name_or_path", "create_new_adapter", "stage", "do_train",
                            "finetuning_type", "lora_rank", "lora_alpha", "lora_dropout", "lora_target",
                            "dataset_dir", "dataset", "template", "cutoff_len", "preprocessing_num_workers",
                            *LLAMAFACTORY_TRAINING_KEYS]


def test_train_llamafactory_writes_parseable_dataset_info_and_yamls(tmp_path, capsys):
    import inspect

    from transformers import TrainingArguments

    from wuxia_lightning.data.chat_formats import load_conversations
    from wuxia_lightning.data.corpus import read_corpus

    bad = tmp_path / "bad.jsonl"  # our reader accepts two user turns in a row; LLaMA-Factory does not
    bad.write_text(json.dumps({"conversations": [{"role": "user", "content": "甲"}, {"role": "user", "content": "乙"},
                                                 {"role": "assistant", "content": "丙"}]}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    out = tmp_path / "lf"
    argv = ["--style-corpus", str(SAMPLE_STYLE), "--instruct-files", str(SAMPLE_INSTRUCT), str(bad),
            "--out", str(out), "--preset", "wuxia"]
    train_llamafactory = load_script("train_llamafactory")
    assert train_llamafactory.main(argv) == 0
    assert "skipped 1 dialogue" in capsys.readouterr().out

    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info == {  # the whole schema LLaMA-Factory reads: a new or renamed field must show up here
        "wuxia_pt": {"file_name": "wuxia_pt.jsonl", "columns": {"prompt": "text"}},
        "wuxia_sft": {"file_name": "wuxia_sft.jsonl", "formatting": "sharegpt",
                      "columns": {"messages": "conversations"},
                      "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                               "assistant_tag": "assistant", "system_tag": "system"}}}
    documents = [json.loads(line) for line in (out / info["wuxia_pt"]["file_name"]).read_text("utf-8").splitlines()]
    expected_docs, _ = read_corpus(str(SAMPLE_STYLE), to_simplified=True)
    assert [d["text"] for d in documents] == [d.text for d in expected_docs]
    dialogues = [json.loads(line) for line in (out / info["wuxia_sft"]["file_name"]).read_text("utf-8").splitlines()]
    expected_dialogues, _ = load_conversations(str(SAMPLE_INSTRUCT), default_system=resolve_system_prompt("wuxia"))
    assert len(dialogues) == len(expected_dialogues) == 30  # every sample dialogue; the bad one left out
    assert [d["conversations"] for d in dialogues] == expected_dialogues
    assert all(d["conversations"][0]["role"] == "system" for d in dialogues)  # preset where none was given

    stage1 = yaml.safe_load((out / "stage1_pt.yaml").read_text(encoding="utf-8"))
    stage2 = yaml.safe_load((out / "stage2_sft.yaml").read_text(encoding="utf-8"))
    assert {k: stage1[k] for k in ("stage", "finetuning_type", "lora_rank", "lora_alpha", "lora_target",
                                   "template", "dataset")} == {
        "stage": "pt", "finetuning_type": "lora", "lora_rank": 16, "lora_alpha": 32, "lora_target": "all",
        "template": "default", "dataset": "wuxia_pt"}
    assert {k: stage2[k] for k in ("stage", "template", "lora_rank", "lora_alpha", "dataset")} == {
        "stage": "sft", "template": "qwen", "lora_rank": 64, "lora_alpha": 128, "dataset": "wuxia_sft"}
    assert stage2["adapter_name_or_path"] == stage1["output_dir"] and stage2["create_new_adapter"] is True
    assert "quantization_bit" not in stage2  # on a 4-bit base LLaMA-Factory would resume the style adapter
    assert Path(stage1["dataset_dir"]) == out.resolve()
    assert list(stage1) == LLAMAFACTORY_STAGE1_KEYS and list(stage2) == LLAMAFACTORY_STAGE2_KEYS
    assert stage1["warmup_steps"] == 100  # configs/qwen2.5-7b_style_qlora.yaml
    assert stage2["warmup_steps"] == 3  # 50, capped at half of 3 epochs x ceil(28 / 16) steps
    # What is not LLaMA-Factory's own goes to TrainingArguments of the transformers installed; a removed field
    # (warmup_ratio, overwrite_output_dir in transformers 5) makes LLaMA-Factory's parser refuse the YAML.
    fields = set(inspect.signature(TrainingArguments).parameters)
    assert sorted((set(stage1) | set(stage2)) - LLAMAFACTORY_ONLY_KEYS - fields) == []
    assert not LLAMAFACTORY_ONLY_KEYS & fields  # an exempt key that is a field after all must be checked

    assert train_llamafactory.main(argv) == 2  # never overwrites an earlier export silently
    assert "--overwrite" in one_error_line(capsys.readouterr().err)
