"""Plain causal-LM pre-training of a small base model, all weights trainable.

The replication needs a base that knows modern Chinese but no wuxia, so stage 1 has something to teach.
This is the same loss path as the stages (chunked CE over labelled positions) without adapters or a
reference; batches come from ``StyleDataModule`` with masking mode "none" only.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from wuxia_lightning.io import staged_directory
from wuxia_lightning.modules.optimization import adamw_with_cosine_schedule
from wuxia_lightning.objectives.causal_lm import token_loss_sums


class CausalLMPretrainModule(L.LightningModule):
    """Trains every weight of the model in ``model_dir`` (a ``save_pretrained`` folder) and writes the
    result, with its tokenizer, to ``output_dir`` at the end of fit."""

    def __init__(self, model_dir: str, output_dir: str, learning_rate: float = 3e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 20, loss_chunk_size: int = 1024) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    def mean_nll(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return token_loss_sums(self.model, batch, chunk_size=self.hparams.loss_chunk_size).mean_ce()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.mean_nll(batch)
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_with_cosine_schedule(self.model.parameters(), hp.learning_rate, hp.weight_decay,
                                          hp.warmup_steps, int(self.trainer.estimated_stepping_batches))

    def on_fit_end(self) -> None:
        if self.trainer.global_rank != 0:
            return
        from wuxia_lightning.pretrained.tokenizer import load_saved_tokenizer

        tokenizer = load_saved_tokenizer(self.hparams.model_dir)
        with staged_directory(Path(self.hparams.output_dir), replace=True) as staging:
            self.model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
