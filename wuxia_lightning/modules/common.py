"""Pieces both stages share: the settings every adapter run has, adapter-only checkpoints, output-folder
protection, the always-on callbacks, the optimizer."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightning as L
import torch

from wuxia_lightning.callbacks.checkpointing import AtomicCheckpoints
from wuxia_lightning.callbacks.nonfinite import NonFiniteGuard, assert_finite_parameters
from wuxia_lightning.callbacks.output_lock import OutputFolderLock
from wuxia_lightning.callbacks.progress import batch_tokens
from wuxia_lightning.callbacks.rng_state import RngStateCheckpoint
from wuxia_lightning.errors import UserInputError
from wuxia_lightning.metrics import registry as names
from wuxia_lightning.modules.optimization import adamw_with_cosine_schedule
from wuxia_lightning.modules.sharding import (
    full_adapter_state,
    is_fsdp2,
    refuse_fsdp_with_4bit,
    refuse_unresumable_checkpoints,
    shard_for_fsdp2,
)
from wuxia_lightning.objectives.causal_lm import final_hidden_states, token_loss_sums
from wuxia_lightning.objectives.losses import TokenLossSums
from wuxia_lightning.pretrained.tokenizer import load_tokenizer


@dataclass(frozen=True)
class RunSettings:
    """The hyper-parameters :class:`AdapterModule` itself reads. Each stage declares them in its own
    ``__init__`` (the YAML schema LightningCLI builds from), and saves them with ``save_hyperparameters``;
    a stage that lacks one fails in ``setup``, before the model loads, not hours later at a checkpoint."""

    model_name_or_path: str
    tokenizer_name_or_path: str | None
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    loss_chunk_size: int
    output_dir: str | None
    overwrite_output: bool
    max_bad_steps: int
    trust_remote_code: bool

    @classmethod
    def from_hparams(cls, hparams: Any) -> RunSettings:
        missing = [f.name for f in fields(cls) if f.name not in hparams]
        if missing:
            raise TypeError(f"an AdapterModule must declare the hyper-parameters {missing}")
        return cls(**{f.name: hparams[f.name] for f in fields(cls)})


class AdapterModule(L.LightningModule):
    """A LightningModule around a peft model (``self.peft_model``, built in ``configure_model``) whose
    checkpoints hold only the trainable tensors. Subclasses call ``save_hyperparameters()``; this class
    reads only :class:`RunSettings`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.strict_loading = False  # checkpoints deliberately omit the frozen base
        self._batch_started = 0.0
        self._tokenizer = None

    @property
    def settings(self) -> RunSettings:
        return RunSettings.from_hparams(self.hparams)

    def setup(self, stage: str) -> None:
        self.settings  # noqa: B018 - a stage that lacks a setting fails here, before any model is loaded

    def tokenizer(self):
        """The tokenizer saved beside the adapters: loaded once, not again at every checkpoint."""
        if self._tokenizer is None:
            run = self.settings
            self._tokenizer = load_tokenizer(run.model_name_or_path, run.tokenizer_name_or_path,
                                             trust_remote_code=run.trust_remote_code)
        return self._tokenizer

    # ---- forward pieces -------------------------------------------------------------------------
    def causal_lm(self) -> torch.nn.Module:
        return self.peft_model.get_base_model()

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final hidden states with the currently active adapters (see ``objectives.causal_lm``)."""
        return final_hidden_states(self.causal_lm(), batch)

    def token_losses(self, batch: dict[str, torch.Tensor], ref_hidden: torch.Tensor | None = None) -> TokenLossSums:
        """CE (and KL to ``ref_hidden``'s distribution) over the labelled positions, chunked."""
        return token_loss_sums(self.causal_lm(), batch, ref_hidden, self.settings.loss_chunk_size)

    # ---- throughput -----------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._batch_started
        tokens = batch_tokens(batch)  # stage 2 with replay: chat tokens
        self.log(names.TRAIN_TOKENS_PER_S, tokens / max(elapsed, 1e-9), on_step=True, prog_bar=True)

    def on_fit_start(self) -> None:
        check_output_dir(self.settings.output_dir, self.settings.overwrite_output,
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
        return [NonFiniteGuard(self.settings.max_bad_steps), OutputFolderLock(self.settings.output_dir),
                AtomicCheckpoints(), RngStateCheckpoint()]

    def save_outputs(self) -> None:
        """Write the adapter folder to ``output_dir`` (each stage knows its layout)."""
        raise NotImplementedError

    # ---- FSDP2 (ModelParallelStrategy; modules/sharding.py) --------------------------------------
    def refuse_unsupported_sharding(self) -> None:
        """Called before the base model loads: FSDP cannot shard a 4-bit base, and distributed checkpoints
        of an adapter-only state would not resume (modules/sharding.py)."""
        if self._trainer is not None:
            refuse_fsdp_with_4bit(self.trainer.strategy, self.hparams.get("quantization", "none"))
            refuse_unresumable_checkpoints(self.trainer.strategy)

    def shard_if_fsdp2(self) -> None:
        """Under ModelParallelStrategy, shard the freshly built peft model over the data-parallel mesh."""
        if self._trainer is None or not is_fsdp2(self.trainer.strategy):
            return
        if self.device_mesh["tensor_parallel"].size() != 1:
            raise UserInputError("tensor parallelism is not implemented here: use ModelParallelStrategy with "
                                 "tensor_parallel_size 1 and data_parallel_size = devices × num_nodes",
                                 field="trainer.strategy")
        shard_for_fsdp2(self.peft_model, self.device_mesh["data_parallel"])

    def adapter_state_for_saving(self) -> dict[str, torch.Tensor] | None:
        """The adapter tensors gathered whole under FSDP2 (a collective: call on every rank, before any
        rank-0-only return), or None when the model holds them whole already."""
        return full_adapter_state(self.peft_model)

    # ---- adapter-only checkpoints ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        assert_finite_parameters(self.peft_model)  # raising here aborts the save before any file is written
        trainable = {f"peft_model.{name}" for name, p in self.peft_model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        self.save_outputs()  # the peft folder follows every checkpoint

    def configure_optimizers(self):
        run = self.settings
        return adamw_with_cosine_schedule([p for p in self.peft_model.parameters() if p.requires_grad],
                                          run.learning_rate, run.weight_decay, run.warmup_steps,
                                          int(self.trainer.estimated_stepping_batches))


def check_output_dir(output_dir: str | None, overwrite: bool, resuming: bool) -> None:
    """Never overwrite a user's earlier output unless asked (or resuming the run that wrote it)."""
    if output_dir is None or overwrite or resuming:
        return
    path = Path(output_dir)
    if path.exists() and any(path.iterdir()):
        raise UserInputError("output folder exists and is not empty; pass --model.overwrite_output true "
                             "to replace it, or choose another --model.output_dir", path=str(path))
