"""Not only Qwen: a tiny random Gemma 3 (built offline like the tiny Qwen models) through every stage.

A Gemma base brings what a Qwen base does not: tied embeddings, no infill tokens (added here and trained as
peft trainable-token rows), no chat template (Gemma's own turn format is used, not ChatML), <bos> before
every text, <eos> instead of <|endoftext|>.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO, load_script
from test_cli import run_cli

from wuxia_lightning.tokens import END_OF_TURN, IGNORE_INDEX, IM_END, START_OF_TURN

TINY_GEMMA = "tiny-gemma3"


@pytest.fixture(scope="module")
def tokenizer():
    from wuxia_lightning.pretrained.tokenizer import load_tokenizer

    return load_tokenizer(TINY_GEMMA)


def test_gemma_tokenizer_gets_infill_tokens_and_gemmas_turn_format(tokenizer):
    from wuxia_lightning.pretrained.tokenizer import (
        GEMMA,
        added_infill_token_ids,
        document_end_id,
        ensure_chat_template,
        leading_special_ids,
    )

    added = added_infill_token_ids(TINY_GEMMA)
    assert len(added) == 4 and all(i >= len(tokenizer) - 4 for i in added)
    assert ensure_chat_template(tokenizer) is GEMMA
    assert IM_END not in tokenizer.chat_template and END_OF_TURN in tokenizer.chat_template
    assert leading_special_ids(tokenizer) == [tokenizer.bos_token_id]
    assert document_end_id(tokenizer) == tokenizer.eos_token_id  # no <|endoftext|> in a Gemma vocabulary


def test_stage2_labels_end_on_end_of_turn_and_the_system_prompt_opens_the_first_user_turn(tokenizer):
    from wuxia_lightning.data.chat_encoding import encode_dialogue
    from wuxia_lightning.pretrained.tokenizer import ensure_chat_template

    ensure_chat_template(tokenizer)
    messages = [{"role": "system", "content": "你是说书人。"}, {"role": "user", "content": "何为江湖？"},
                {"role": "assistant", "content": "江湖者，人心也。"}, {"role": "user", "content": "再说一句。"},
                {"role": "assistant", "content": "剑在人在。"}]
    encoded = encode_dialogue(tokenizer, messages, max_length=512)
    text = tokenizer.decode(encoded.input_ids)
    assert text.startswith("<bos><start_of_turn>user\n你是说书人。\n\n何为江湖？<end_of_turn>\n<start_of_turn>model\n")
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    labelled = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "江湖者，人心也。<end_of_turn>剑在人在。<end_of_turn>"
    assert labelled.count(end_of_turn) == 2 and labelled[-1] == end_of_turn
    assert tokenizer.convert_tokens_to_ids(START_OF_TURN) not in labelled


def test_stage1_samples_start_with_bos_and_fit_max_length():
    from wuxia_lightning.data.style_datamodule import StyleDataModule

    data = StyleDataModule(corpus=str(REPO / "data" / "sample" / "style"), max_length=64, batch_size=2,
                           model_name_or_path=TINY_GEMMA)
    data.prepare_data()
    data.setup("fit")
    bos = data.tokenizer.bos_token_id
    dataset = data.train_dataloader().dataset
    for index in range(0, len(dataset), max(1, len(dataset) // 20)):
        sample = dataset[(0, index)]
        assert sample["input_ids"][0] == bos and sample["labels"][0] == IGNORE_INDEX
        assert sample["loss_weights"][0] == 0 and len(sample["input_ids"]) <= 64
        assert bos not in sample["input_ids"][1:]
    stream = data.streams["train"]
    assert np.count_nonzero(stream.ids == data.tokenizer.eos_token_id) == np.count_nonzero(stream.special)


def test_fused_loss_on_a_tied_head_with_trained_token_rows_matches_the_checkpointed_loss():
    """Gemma's LM head is the embedding; trained infill rows make peft wrap it. The fused pass must give the
    same sums and the same gradients (LoRA and the token rows) as the plain autograd path, at β > 0."""
    from peft import get_peft_model

    from wuxia_lightning.modeling.adapters import frozen_reference, lora_config
    from wuxia_lightning.modeling.loading import load_base_model
    from wuxia_lightning.objectives.causal_lm import final_hidden_states
    from wuxia_lightning.objectives.losses import chunked_ce_kl, select_loss_positions, trained_token_rows
    from wuxia_lightning.pretrained.tokenizer import added_infill_token_ids

    new = added_infill_token_ids(TINY_GEMMA)
    torch.manual_seed(0)
    model = get_peft_model(load_base_model(TINY_GEMMA), lora_config(8, 16, 0.0, trainable_token_ids=new),
                           adapter_name="style")
    with torch.no_grad():  # move every trainable tensor off its initial value (B = 0, rows = base rows)
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn_like(param))
    causal = model.get_base_model()
    assert trained_token_rows(causal.get_output_embeddings()) is not None
    ids = torch.randint(4, 1500, (2, 24))
    ids[:, 5], ids[:, 12] = new[0], new[3]  # the new tokens as inputs and as targets
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    results = {}
    for fused in (True, False):
        model.zero_grad()
        with frozen_reference(model):
            reference = final_hidden_states(causal, batch)
        selected, targets, weights, mask = select_loss_positions(final_hidden_states(causal, batch), ids, None)
        sums = chunked_ce_kl(selected, targets, weights, causal.get_output_embeddings(), reference[:, :-1][mask],
                             chunk_size=16, fused=fused)
        (sums.ce + 0.7 * sums.kl).backward()
        results[fused] = (sums.ce.item(), sums.kl.item(),
                          {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    (ce_f, kl_f, grads_f), (ce_c, kl_c, grads_c) = results[True], results[False]
    assert ce_f == pytest.approx(ce_c, rel=1e-5) and kl_f == pytest.approx(kl_c, rel=1e-4, abs=1e-6)
    rows = [n for n in grads_f if "trainable_tokens_delta" in n]
    assert rows and grads_c[rows[0]].abs().max() > 0
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_c[name], rtol=1e-4, atol=1e-5)


def test_copy_free_token_rows_give_pefts_outputs_and_gradients():
    """The copy-free forward of trained token rows (embedding and tied head) against peft's own, which
    builds the V×d matrix with the rows replaced: the same logits, loss and gradients, adapters on and
    off, and the new tokens both read (inputs) and predicted (targets)."""
    from peft import get_peft_model

    from wuxia_lightning.modeling.adapters import lora_config
    from wuxia_lightning.modeling.loading import load_base_model
    from wuxia_lightning.modeling.token_rows import copy_free_token_rows
    from wuxia_lightning.pretrained.tokenizer import added_infill_token_ids

    new = added_infill_token_ids(TINY_GEMMA)
    ids = torch.randint(4, 1500, (2, 24), generator=torch.Generator().manual_seed(1))
    ids[:, 5], ids[:, 12], ids[1, 20] = new[0], new[3], new[0]
    results = {}
    for copy_free in (False, True):  # the same seeds: the same weights through both forwards
        torch.manual_seed(0)
        model = get_peft_model(load_base_model(TINY_GEMMA), lora_config(8, 16, 0.0, trainable_token_ids=new),
                               adapter_name="style")
        with torch.no_grad():  # trained rows away from the base rows, or the override would change nothing
            for name, param in model.named_parameters():
                if "trainable_tokens_delta" in name:
                    param.add_(0.5 * torch.randn_like(param))
        if copy_free:
            assert copy_free_token_rows(model) == 2  # the embedding and the tied head
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        with torch.no_grad(), model.disable_adapter():
            off = model(input_ids=ids).logits
        results[copy_free] = (out.logits.detach(), off, {n: p.grad.clone() for n, p in model.named_parameters()
                                                         if p.grad is not None})
    (peft_on, peft_off, peft_grads), (ours_on, ours_off, our_grads) = results[False], results[True]
    torch.testing.assert_close(ours_on, peft_on, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_off, peft_off)
    assert not torch.allclose(peft_on[:, :, new[0]], peft_off[:, :, new[0]])  # the rows do matter
    rows = [n for n in peft_grads if "trainable_tokens_delta" in n]
    assert rows and set(our_grads) == set(peft_grads)
    for name in peft_grads:
        torch.testing.assert_close(our_grads[name], peft_grads[name], rtol=1e-4, atol=1e-6)


def test_both_stages_predict_and_export_on_tiny_gemma(tmp_path):
    """Stage 1 → stage 2 → predict → merged export through the CLI: the stacked folder carries Gemma's
    template, stops on <end_of_turn>, and the adapters do not hold a copy of the embedding."""
    from wuxia_lightning.modeling.stacking import load_stacked

    common = [f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--model.model_name_or_path",
              TINY_GEMMA, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]
    run_cli("fit", "--config", "configs/quickstart_style.yaml", *common, f"--model.output_dir={tmp_path / 'style'}",
            "--data.max_length=96", "--model.eval_samples=1")
    style_files = {p.name: p.stat().st_size for p in (tmp_path / "style").iterdir()}
    assert style_files["adapter_model.safetensors"] < 5_000_000  # LoRA + 4 rows, no embedding copy
    stacked = tmp_path / "stacked"
    run_cli("fit", "--config", "configs/quickstart_instruct.yaml", *common, f"--model.style_adapter={tmp_path / 'style'}",
            f"--model.output_dir={stacked}", "--model.eval_samples=1", "--data.replay_max_length=96",
            "--model.max_new_tokens=8", "--model.train_turn_end_row=true")  # random rows have no twins: asked
    manifest = json.loads((stacked / "wuxia_manifest.json").read_text(encoding="utf-8"))
    assert END_OF_TURN in manifest["chat_template"] and IM_END not in manifest["chat_template"]
    model, tokenizer = load_stacked(stacked)
    assert_turn_end_row_trained_and_served(stacked, model, tokenizer)
    eos = json.loads((stacked / "generation_config.json").read_text(encoding="utf-8"))["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids(END_OF_TURN) in eos and tokenizer.eos_token_id in eos
    run_cli("predict", "--config", "configs/quickstart_instruct.yaml", *common, f"--model.output_dir={stacked}",
            f"--model.style_adapter={tmp_path / 'style'}", "--data.prompts", "scripts/example_prompts.txt",
            "--model.max_new_tokens=8")
    predictions = [json.loads(line) for line in (stacked / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(predictions) == 12 and all(isinstance(p["generation"], str) for p in predictions)
    table = tmp_path / "base_vs_stacked.md"
    compare = ["--model", str(stacked), "--prompts", "scripts/example_prompts.txt", "--out", str(table),
               "--max-new-tokens", "6"]
    assert load_script("compare_replies").main(compare) == 0
    rows = [line for line in table.read_text(encoding="utf-8").splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 12 and "base (adapters off)" in rows[0]
    assert load_script("compare_replies").main(compare) == 2  # never overwrites without --overwrite
    assert load_script("export").main(["--model", str(stacked), "--format", "merged", "--out",
                                       str(tmp_path / "merged"), "--dtype", "float32"]) == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    ids = tokenizer("<bos>剑光一闪", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_twin_rows_against_a_full_cosine_computation():
    """The chunked count equals a plain cosine over all rows, across chunk boundaries."""
    from wuxia_lightning.modeling.untrained_rows import twin_rows

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(40_000, 16, generator=generator)
    weight[17_000] = 3.0 * weight[5]  # the same direction at another length: a twin
    weight[33_000] = weight[5] + 1e-3 * torch.randn(16, generator=generator)
    for row, expected in ((5, 2), (6, 0)):
        full = torch.nn.functional.cosine_similarity(weight, weight[row].unsqueeze(0), dim=1)
        assert twin_rows(weight, row) == int((full >= 0.99).sum()) - 1 == expected


def test_stage2_warns_when_the_base_never_trained_the_turn_end_token(tokenizer, caplog):
    """tiny-gemma3's rows are random: no warning. Give <end_of_turn> a twin, as the real Gemma 3 270M base
    has thousands (tests/test_real_base.py): the warning names the token and the count."""
    from wuxia_lightning.modeling.loading import load_base_model
    from wuxia_lightning.modules.instruct import warn_if_turn_end_untrained

    model = load_base_model(TINY_GEMMA)
    assert warn_if_turn_end_untrained(model, tokenizer) == 0 and not caplog.records
    with torch.no_grad():
        rows = model.get_input_embeddings().weight
        rows[tokenizer.convert_tokens_to_ids(END_OF_TURN)] = 2.0 * rows[42]
    assert warn_if_turn_end_untrained(model, tokenizer) == 1
    assert "never trained <end_of_turn>" in caplog.text and "1 twin rows" in caplog.text


def assert_turn_end_row_trained_and_served(stacked, model, tokenizer) -> None:
    """The instruct adapter holds the <end_of_turn> row beside the style's infill rows, stage 2 moved it, and
    the served model (both adapters active) embeds <end_of_turn> with it and the infill tokens with style's."""
    from safetensors.torch import load_file

    from wuxia_lightning.modeling.loading import load_base_model
    from wuxia_lightning.tokens import FIM_TOKENS

    def rows(adapter: str) -> torch.Tensor:
        [tensor] = [t for n, t in load_file(str(stacked / adapter / "adapter_model.safetensors")).items()
                    if "trainable_tokens_delta" in n]
        return tensor

    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    base_row = load_base_model(TINY_GEMMA).get_input_embeddings().weight[end_of_turn]
    instruct_row, style_rows = rows("instruct"), rows("style")
    assert instruct_row.shape == (1, base_row.shape[0]) and not torch.allclose(instruct_row[0], base_row)
    ids = torch.tensor([[end_of_turn, *tokenizer.convert_tokens_to_ids(list(FIM_TOKENS))]])
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        served = embedding(ids)[0] / embedding.token_adapter._get_embed_scale()
    torch.testing.assert_close(served[0], instruct_row[0])
    torch.testing.assert_close(served[1:], style_rows)
