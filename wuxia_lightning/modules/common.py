"""Pieces both stages share: model hooks, adapter-only checkpoints, output-folder protection,
the non-finite guard."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from wuxia_lightning.checkpointing import AtomicCheckpoints
from wuxia_lightning.errors import UserInputError
from wuxia_lightning.modeling.loading import load_tokenizer
from wuxia_lightning.nonfinite import NonFiniteGuard, assert_finite_parameters
from wuxia_lightning.objectives.losses import TokenLossSums, chunked_ce_kl, select_loss_positions
from wuxia_lightning.output_lock import OutputFolderLock
from wuxia_lightning.progress import batch_tokens
from wuxia_lightning.rng_state import RngStateCheckpoint

# Used when a subclass has no ``max_bad_steps`` hyper-parameter (yet).
DEFAULT_MAX_BAD_STEPS = 10


class AdapterModule(L.LightningModule):
    """A LightningModule around a peft model (``self.peft_model``, built in ``configure_model``) whose
    checkpoints hold only the trainable tensors.

    Subclasses may declare the hyper-parameters ``max_bad_steps`` (non-finite guard) and
    ``trust_remote_code`` (model/tokenizer loading); without them the safe defaults apply.
    """

    def __init__(self) -> None:
        super().__init__()
        self.strict_loading = False  # checkpoints deliberately omit the frozen base
        self._batch_started = 0.0
        self._tokenizer = None

    def tokenizer(self):
        """The tokenizer saved beside the adapters: loaded once, not again at every checkpoint."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.model_name_or_path, self.hparams.tokenizer_name_or_path,
                                             trust_remote_code=self.hparams.get("trust_remote_code", False))
        return self._tokenizer

    # ---- forward pieces -------------------------------------------------------------------------
    def causal_lm(self) -> torch.nn.Module:
        return self.peft_model.get_base_model()

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final hidden states with the currently active adapters; the LM head is applied chunked later."""
        decoder = self.causal_lm().get_decoder()
        return decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state

    def token_losses(self, batch: dict[str, torch.Tensor], ref_hidden: torch.Tensor | None = None,
                     chunk_size: int = 256) -> TokenLossSums:
        """CE (and KL to ``ref_hidden``'s distribution) over the labelled positions, chunked."""
        hidden = self.hidden_states(batch)
        selected, targets, weights, mask = select_loss_positions(hidden, batch["labels"], batch.get("loss_weights"))
        ref_selected = ref_hidden[:, :-1][mask] if ref_hidden is not None else None
        return chunked_ce_kl(selected, targets, weights, self.causal_lm().get_output_embeddings(),
                             ref_selected, chunk_size=chunk_size)

    # ---- throughput -----------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._batch_started
        tokens = batch_tokens(batch)  # stage 2 with replay: chat tokens
        self.log("train/tokens_per_s", tokens / max(elapsed, 1e-9), on_step=True, prog_bar=True)

    def on_fit_start(self) -> None:
        check_output_dir(self.hparams.output_dir, self.hparams.overwrite_output,
                         resuming=self.trainer.ckpt_path is not None)
        # from_pretrained returns eval-mode modules and Lightning keeps per-module modes: say what we mean.
        self.peft_model.train()

    def on_fit_end(self) -> None:
        assert_finite_parameters(self.peft_model)
        self.save_outputs()

    def configure_callbacks(self) -> list[L.Callback]:
        """Always on, whatever the config's ``trainer.callbacks`` list says: skip non-finite steps, one
        writer per output folder, checkpoints written atomically and carrying the RNG states (an exact
        resume). Module callbacks replace trainer callbacks of the same type, so a ``NonFiniteGuard``
        given in the config is superseded by ``--model.max_bad_steps``."""
        max_bad_steps = self.hparams.get("max_bad_steps", DEFAULT_MAX_BAD_STEPS)
        return [NonFiniteGuard(max_bad_steps), OutputFolderLock(self.hparams.get("output_dir")),
                AtomicCheckpoints(), RngStateCheckpoint()]

    def save_outputs(self) -> None:
        """Write the adapter folder to ``output_dir`` (each stage knows its layout)."""
        raise NotImplementedError

    # ---- adapter-only checkpoints ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        assert_finite_parameters(self.peft_model)  # raising here aborts the save before any file is written
        trainable = {f"peft_model.{name}" for name, p in self.peft_model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        self.save_outputs()  # the peft folder follows every checkpoint

    def configure_optimizers(self):
        from transformers import get_cosine_schedule_with_warmup

        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.hparams.warmup_steps, total // 2)
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_output_dir(output_dir: str | None, overwrite: bool, resuming: bool) -> None:
    """Never overwrite a user's earlier output unless asked (or resuming the run that wrote it)."""
    if output_dir is None or overwrite or resuming:
        return
    path = Path(output_dir)
    if path.exists() and any(path.iterdir()):
        raise UserInputError("output folder exists and is not empty; pass --model.overwrite_output true "
                             "to replace it, or choose another --model.output_dir", path=str(path))
