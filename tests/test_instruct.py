"""Stage 2: only `instruct` trains, `style` stays bit-identical, the stacked folder restores exactly."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO

from wuxia_lightning.data.instruct_datamodule import InstructDataModule
from wuxia_lightning.modeling.adapters import lora_config, save_adapter_atomically
from wuxia_lightning.modeling.loading import load_base_model
from wuxia_lightning.modeling.stacking import load_stacked
from wuxia_lightning.modules.instruct import InstructModule
from wuxia_lightning.pretrained.tokenizer import load_tokenizer

DIALOGUES = REPO / "data" / "sample" / "instruct" / "train.jsonl"


@pytest.fixture(scope="module")
def style_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A stage-1 style adapter with non-zero weights, saved the way StyleAlignmentModule saves it."""
    from peft import get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load_base_model(str(tiny_model_dir)), lora_config(8, 16, 0.0), adapter_name="style")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    out = tmp_path_factory.mktemp("stage1") / "style"
    save_adapter_atomically(model, "style", out, load_tokenizer(str(tiny_model_dir)),
                            {"stage": "style", "adapters": ["style"], "base_model": str(tiny_model_dir)})
    return out


def build(tiny_model_dir, style_adapter, output_dir=None, **kwargs) -> InstructModule:
    module = InstructModule(model_name_or_path=str(tiny_model_dir), style_adapter=str(style_adapter),
                            output_dir=str(output_dir) if output_dir else None, **kwargs)
    module.configure_model()
    return module


def fit(module: InstructModule, tiny_model_dir, epochs: int = 1, **trainer_kwargs) -> L.Trainer:
    data = InstructDataModule(train_files=str(DIALOGUES), max_length=192, batch_size=4,
                              model_name_or_path=str(tiny_model_dir))
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs)
    trainer.fit(module, datamodule=data)
    return trainer


def test_trainable_set_is_exactly_the_instruct_lora(tiny_model_dir, style_adapter):
    module = build(tiny_model_dir, style_adapter)
    trainable = {n for n, p in module.peft_model.named_parameters() if p.requires_grad}
    instruct_lora = {n for n, _ in module.peft_model.named_parameters() if "lora_" in n and ".instruct." in n}
    assert trainable == instruct_lora and instruct_lora
    assert module.peft_model.base_model.active_adapters == ["style", "instruct"]


def test_style_bit_identical_after_fit_and_stacked_folder_restores_exactly(tiny_model_dir, style_adapter, tmp_path):
    module = build(tiny_model_dir, style_adapter, output_dir=tmp_path / "stacked")
    loaded_style = {n: p.detach().clone() for n, p in module.peft_model.named_parameters() if ".style." in n}
    instruct_before = {n: p.detach().clone() for n, p in module.peft_model.named_parameters() if ".instruct." in n}
    fit(module, tiny_model_dir, epochs=2)
    params = dict(module.peft_model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in loaded_style.items())
    assert any(not torch.equal(params[n], before) for n, before in instruct_before.items())

    folder = tmp_path / "stacked"
    manifest = json.loads((folder / "wuxia_manifest.json").read_text())
    assert manifest["adapters"] == ["style", "instruct"]
    assert (folder / "style" / "adapter_model.safetensors").exists()
    assert (folder / "instruct" / "adapter_model.safetensors").exists()
    generation = json.loads((folder / "generation_config.json").read_text())
    im_end = load_tokenizer(str(tiny_model_dir)).convert_tokens_to_ids("<|im_end|>")
    assert im_end in generation["eos_token_id"]

    ids = torch.randint(10, 300, (2, 20))
    module.peft_model.eval()
    with torch.no_grad():
        trained = module.peft_model(input_ids=ids).logits
    restored, tokenizer = load_stacked(folder)
    assert tokenizer.chat_template
    with torch.no_grad():
        restored_logits = restored(input_ids=ids).logits
        torch.testing.assert_close(restored_logits, trained, rtol=0, atol=1e-6)
        for only in ("style", "instruct"):
            restored.base_model.set_adapter([only])
            assert not torch.allclose(restored(input_ids=ids).logits, trained, atol=1e-4)


def test_changed_style_weights_fail_loudly(tiny_model_dir, style_adapter):
    from wuxia_lightning.modules.instruct import verify_unchanged

    module = build(tiny_model_dir, style_adapter)
    name = next(n for n in module.style_snapshot)
    with torch.no_grad():
        dict(module.peft_model.named_parameters())[name].add_(1e-7)
    with pytest.raises(RuntimeError, match="style"):
        verify_unchanged(module.peft_model, module.style_snapshot)


def test_continue_style_mode_trains_the_style_adapter_itself(tiny_model_dir, style_adapter):
    module = build(tiny_model_dir, style_adapter, adapter_mode="continue_style")
    trainable = {n for n, p in module.peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".style." in n for n in trainable)
    assert not any(".instruct." in n for n, _ in module.peft_model.named_parameters())


def test_4bit_base_keeps_style_frozen_and_trains_instruct(tiny_model_dir, style_adapter):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    module = build(tiny_model_dir, style_adapter, quantization="4bit")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.peft_model.modules())
    trainable = {n for n, p in module.peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".instruct." in n for n in trainable)
    loaded_style = {n: p.detach().clone() for n, p in module.peft_model.named_parameters() if ".style." in n}
    fit(module, tiny_model_dir, epochs=1, limit_train_batches=3)
    params = dict(module.peft_model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in loaded_style.items())


def test_prompt_files_txt_jsonl_and_chat_data(tmp_path):
    from wuxia_lightning.data.instruct_datamodule import read_prompts
    from wuxia_lightning.errors import UserInputError

    (tmp_path / "p.txt").write_text("剑光一闪\n\n夜色如墨\n", encoding="utf-8")
    assert [p[-1]["content"] for p in read_prompts(str(tmp_path / "p.txt"), None)] == ["剑光一闪", "夜色如墨"]
    lines = ['{"prompt": "你好"}', '{"messages": [{"role": "user", "content": "请描写一场雨"}]}']
    (tmp_path / "p.jsonl").write_text("\n".join(lines), encoding="utf-8")
    prompts = read_prompts(str(tmp_path / "p.jsonl"), "系统")
    assert [p[0]["content"] for p in prompts] == ["系统", "系统"] and prompts[1][-1]["content"] == "请描写一场雨"
    chats = read_prompts(str(DIALOGUES), None)
    assert len(chats) == 24 and all(chat[-1]["role"] == "user" for chat in chats)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": 3}\n', encoding="utf-8")
    with pytest.raises(UserInputError, match=r"bad.jsonl:2.*prompt"):
        read_prompts(str(tmp_path / "bad.jsonl"), None)


def test_predictions_are_valid_json_even_when_a_score_is_nan(tmp_path):
    from wuxia_lightning.modules.instruct import write_predictions

    write_predictions(tmp_path, [{"generation": "", "fw_js": float("nan")}], {"fw_js": float("inf")}, False)
    text = (tmp_path / "predictions.jsonl").read_text(encoding="utf-8")
    assert "NaN" not in text and json.loads(text)["fw_js"] is None
    assert json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))["fw_js"] is None


def test_adapter_scales_multiply_each_delta_exactly(tmp_path):
    """style × s changes the output as base + s·Δstyle + Δinstruct: checked on one LoRA layer's output."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from wuxia_lightning.modeling.adapters import activate, lora_config
    from wuxia_lightning.modeling.stacking import INSTRUCT, STYLE, set_adapter_scales
    from wuxia_lightning.pretrained.tiny import tiny_config, train_char_tokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_config("qwen2", train_char_tokenizer(["剑光一闪"], min_count=1)))
    model = get_peft_model(base, lora_config(4, 8, 0.0), adapter_name=STYLE)
    model.add_adapter(INSTRUCT, lora_config(4, 16, 0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # peft starts B at zero: give both adapters a real delta
    activate(model, [STYLE, INSTRUCT])
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, layer.in_features)

    def delta(adapter: str) -> torch.Tensor:
        return layer.lora_B[adapter](layer.lora_A[adapter](x)) * layer.scaling[adapter]

    with torch.no_grad():
        plain, d_style, d_instruct = layer.base_layer(x), delta(STYLE), delta(INSTRUCT)
        set_adapter_scales(model, {STYLE: 1.5, INSTRUCT: 0.5})
        set_adapter_scales(model, {STYLE: 1.5, INSTRUCT: 0.5})  # idempotent: never compounds
        torch.testing.assert_close(layer(x), plain + 1.5 * d_style + 0.5 * d_instruct)
        set_adapter_scales(model, {STYLE: 1.0, INSTRUCT: 1.0})
        torch.testing.assert_close(layer(x), plain + d_style + d_instruct)


def test_composed_mode_trains_instruct_without_style_and_serves_both(tiny_model_dir, style_adapter, tmp_path):
    """composed: the training forward is the bare base + instruct (style off), so at init (instruct B = 0)
    it equals the bare base exactly; the saved folder serves style + instruct together."""
    module = build(tiny_model_dir, style_adapter, output_dir=tmp_path / "composed", adapter_mode="composed")
    assert module.peft_model.base_model.active_adapters == ["instruct"]
    ids = torch.randint(10, 300, (2, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    bare = load_base_model(str(tiny_model_dir)).eval()
    with torch.no_grad():
        expected = bare.get_decoder()(**batch).last_hidden_state
        torch.testing.assert_close(module.hidden_states(batch), expected, rtol=0, atol=0)
    loaded_style = {n: p.detach().clone() for n, p in module.peft_model.named_parameters() if ".style." in n}
    fit(module, tiny_model_dir)
    params = dict(module.peft_model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in loaded_style.items())

    restored, _ = load_stacked(tmp_path / "composed")
    assert restored.base_model.active_adapters == ["style", "instruct"]
    module.peft_model.base_model.set_adapter(["style", "instruct"])
    module.peft_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(input_ids=ids).logits, module.peft_model(input_ids=ids).logits,
                                   rtol=0, atol=1e-6)


def test_composed_mode_refuses_replay():
    with pytest.raises(ValueError, match="replay_beta"):
        InstructModule(style_adapter="x", adapter_mode="composed", replay_beta=1.0).configure_model()
