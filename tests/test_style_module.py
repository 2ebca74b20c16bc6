"""StyleAlignmentModule on a tiny real Qwen2 model: reference = base, β = 0 skips it, frozen base."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from wuxia_lightning.modules.style import StyleAlignmentModule


def make_module(tiny_model_dir, **kwargs) -> StyleAlignmentModule:
    module = StyleAlignmentModule(model_name_or_path=str(tiny_model_dir), **kwargs)
    module.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero; give the adapter a real effect
        for name, param in module.peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return module


def batch_of(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
            "loss_weights": torch.ones_like(ids, dtype=torch.float32)}


def test_reference_logits_equal_a_freshly_loaded_base_model(tiny_model_dir):
    module = make_module(tiny_model_dir)
    ids = torch.randint(10, 300, (2, 24))
    batch = batch_of(ids)
    head = module.causal_lm().get_output_embeddings()
    reference_logits = head(module.reference_hidden(batch))
    policy_logits = head(module.hidden_states(batch))
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        base_logits = fresh(input_ids=ids).logits
    torch.testing.assert_close(reference_logits, base_logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy_logits, base_logits, atol=1e-3)  # the adapter really acts


def test_beta_zero_makes_no_reference_forward(tiny_model_dir):
    calls = []
    for beta in (0.0, 0.1):
        module = make_module(tiny_model_dir, kl_beta=beta)
        decoder = module.causal_lm().get_decoder()
        handle = decoder.register_forward_hook(lambda *_, beta=beta: calls.append(beta))
        out = module.step_losses(batch_of(torch.randint(10, 300, (2, 16))))
        handle.remove()
        assert (out.kl > 0) == (beta > 0)
    assert calls.count(0.0) == 1 and calls.count(0.1) == 2


def test_only_lora_style_trainable_even_after_reference_pass(tiny_model_dir):
    module = make_module(tiny_model_dir)
    before = {n for n, p in module.peft_model.named_parameters() if p.requires_grad}
    assert before and all("lora_" in n and ".style." in n for n in before)
    module.step_losses(batch_of(torch.randint(10, 300, (1, 12))))  # runs disable_adapter()
    after = {n for n, p in module.peft_model.named_parameters() if p.requires_grad}
    assert after == before


def test_loss_backward_reaches_only_the_adapter(tiny_model_dir):
    module = make_module(tiny_model_dir)
    out = module.step_losses(batch_of(torch.randint(10, 300, (2, 16))))
    out.loss.backward()
    grads = {n for n, p in module.peft_model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)


def test_checkpoint_keeps_only_adapter_tensors(tiny_model_dir):
    module = make_module(tiny_model_dir)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    kept = set(checkpoint["state_dict"])
    assert kept and all("lora_" in key for key in kept)
    assert len(kept) < len(module.state_dict())


def test_qlora_stage1_trains_with_kl_and_validation_between_steps(tiny_model_dir):
    """nf4 base on the CPU: reference passes (adapter disabled) and validation interleave with training."""
    import bitsandbytes as bnb
    import lightning as L
    from conftest import REPO

    from wuxia_lightning.data.style_datamodule import StyleDataModule

    module = StyleAlignmentModule(model_name_or_path=str(tiny_model_dir), quantization="4bit", kl_beta=0.5,
                                  learning_rate=5e-3, warmup_steps=0)
    data = StyleDataModule(corpus=str(REPO / "data" / "sample" / "style"), max_length=64, batch_size=2,
                           val_fraction=0.2, model_name_or_path=str(tiny_model_dir))
    trainer = L.Trainer(accelerator="cpu", max_steps=4, val_check_interval=2, limit_val_batches=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.peft_model.modules())
    metrics = trainer.callback_metrics
    assert metrics["train/kl"] > 0 and torch.isfinite(metrics["val_style/ppl"])
    trainable = {n for n, p in module.peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".style." in n for n in trainable)


def test_tokenizer_without_fim_tokens_gets_sentinels_whose_rows_the_adapter_trains(tmp_path):
    """A base whose tokenizer lacks the FIM tokens: they are added, the embedding grows, the adapter trains
    exactly those new rows, and the saved style folder restores the trained rows."""
    from conftest import SAMPLE_TEXT

    from wuxia_lightning.data.masking import DynamicMasker, InfillTokens, MaskingConfig
    from wuxia_lightning.modeling.stacking import load_stacked
    from wuxia_lightning.pretrained.tiny import make_tiny_model, train_bpe_tokenizer
    from wuxia_lightning.pretrained.tokenizer import load_tokenizer
    from wuxia_lightning.tokens import FIM_TOKENS, QWEN_SPECIAL_TOKENS

    plain = train_bpe_tokenizer([SAMPLE_TEXT] * 4, vocab_size=320, special_tokens=QWEN_SPECIAL_TOKENS[:3])
    plain.save_pretrained(tmp_path / "tok")
    folder = make_tiny_model(tmp_path / "model", tokenizer_path=tmp_path / "tok")
    assert not set(FIM_TOKENS) & set(plain.get_vocab())

    tokenizer = load_tokenizer(str(folder))
    tokens = InfillTokens.from_tokenizer(tokenizer)
    module = StyleAlignmentModule(model_name_or_path=str(folder))
    module.configure_model()
    trainable = {n for n, p in module.peft_model.named_parameters() if p.requires_grad}
    assert any("trainable_tokens" in n for n in trainable)

    ids = np.array(tokenizer(SAMPLE_TEXT)["input_ids"][:40])
    masker = DynamicMasker(MaskingConfig(span_prob=1.0, function_word_prob=0.0, none_prob=0.0), tokens, 64)
    sample = masker(ids, np.zeros(len(ids), bool), np.zeros(len(ids), bool), epoch=0, index=0)
    batch = {key: torch.as_tensor(sample[key])[None] for key in ("input_ids", "labels", "loss_weights")}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    optimizer = torch.optim.SGD([p for p in module.peft_model.parameters() if p.requires_grad], lr=1.0)
    embed = module.peft_model.get_input_embeddings()
    before = embed(torch.tensor([[tokens.begin, tokens.hole, 5]])).detach().clone()
    module.step_losses(batch).loss.backward()
    optimizer.step()
    after = embed(torch.tensor([[tokens.begin, tokens.hole, 5]])).detach()
    assert not torch.equal(before[0, :2], after[0, :2])  # the new rows moved
    assert torch.equal(before[0, 2], after[0, 2])  # an old row did not

    from wuxia_lightning.modeling.adapters import save_adapter_atomically

    save_adapter_atomically(module.peft_model, "style", tmp_path / "style", tokenizer,
                            {"stage": "style", "adapters": ["style"], "base_model": str(folder)})
    restored, _ = load_stacked(tmp_path / "style")
    with torch.no_grad():
        restored_rows = restored.get_input_embeddings()(torch.tensor([[tokens.begin, tokens.hole, 5]]))
    torch.testing.assert_close(restored_rows, after)


# ---- the objective without a Trainer ------------------------------------------------------------

def test_stage1_objective_runs_without_a_trainer_and_matches_a_full_vocabulary_reference(tiny_model_dir):
    """objectives.causal_lm + modeling.adapters.frozen_reference are all a training loop needs: the loss
    equals CE + β·KL computed by hand from full logits of the policy and of a freshly loaded base."""
    from wuxia_lightning.modeling.adapters import frozen_reference
    from wuxia_lightning.objectives.causal_lm import final_hidden_states, style_alignment_loss

    module = make_module(tiny_model_dir, kl_beta=0.5, lora_dropout=0.0)  # deterministic forwards to compare
    policy = module.peft_model
    ids = torch.randint(10, 300, (2, 16))
    batch = batch_of(ids)
    with frozen_reference(policy):
        ref_hidden = final_hidden_states(policy.get_base_model(), batch)
    out = style_alignment_loss(policy.get_base_model(), batch, 0.5, ref_hidden, chunk_size=7)

    logits = policy(input_ids=ids).logits[:, :-1].double()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        ref_logits = base(input_ids=ids).logits[:, :-1].double()
    log_p, log_q = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    ce = -log_p.gather(-1, ids[:, 1:, None]).mean()
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    torch.testing.assert_close(out.ce.double(), ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.kl.double(), kl, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), ce + 0.5 * kl, rtol=1e-5, atol=1e-5)


def test_frozen_reference_restores_active_adapters_and_trainable_set(tiny_model_dir):
    from wuxia_lightning.modeling.adapters import activate, frozen_reference, lora_config

    module = make_module(tiny_model_dir)
    policy = module.peft_model
    policy.add_adapter("instruct", lora_config(4, 8, 0.0))
    activate(policy, ["style", "instruct"])
    trainable = {n for n, p in policy.named_parameters() if ".instruct." in n and "lora_" in n}
    for name, param in policy.named_parameters():
        param.requires_grad_(name in trainable)
    for adapters in ((), ("style",)):
        with frozen_reference(policy, adapters):
            assert not torch.is_grad_enabled()
            assert list(policy.base_model.active_adapters) == (list(adapters) or ["style", "instruct"])
        assert list(policy.base_model.active_adapters) == ["style", "instruct"]
        assert {n for n, p in policy.named_parameters() if p.requires_grad} == trainable


def test_run_settings_are_declared_by_both_stages_and_missing_ones_are_named():
    """AdapterModule reads only RunSettings; each stage declares them in its __init__ (the YAML schema)."""
    import inspect
    from dataclasses import fields

    from wuxia_lightning.modules.common import RunSettings
    from wuxia_lightning.modules.instruct import InstructModule

    for stage in (StyleAlignmentModule, InstructModule):
        assert {f.name for f in fields(RunSettings)} <= set(inspect.signature(stage.__init__).parameters)
    settings = RunSettings.from_hparams(dict(StyleAlignmentModule(learning_rate=1e-3).hparams))
    assert settings.learning_rate == 1e-3 and settings.max_bad_steps == 10
    with pytest.raises(TypeError, match="learning_rate"):
        RunSettings.from_hparams({f.name: None for f in fields(RunSettings) if f.name != "learning_rate"})
