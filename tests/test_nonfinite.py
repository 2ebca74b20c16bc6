"""Non-finite guard on real tiny stage-1 fits: a NaN loss or an Inf gradient skips that step (weights
bit-identical), training goes on, K bad steps in a row stop it with the last good outputs intact; the
output-folder lock is held during fit and released after it, also when fit fails."""

from __future__ import annotations

import json
import logging
import socket
import subprocess

import lightning as L
import pytest
import torch
from conftest import REPO

from wuxia_lightning.callbacks.nonfinite import NonFiniteGuard, NonFiniteTrainingError, describe_batch
from wuxia_lightning.callbacks.output_lock import lock_path
from wuxia_lightning.data.style_datamodule import StyleDataModule
from wuxia_lightning.errors import UserInputError
from wuxia_lightning.modules.style import StyleAlignmentModule


def trainable_state(module: L.LightningModule) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.peft_model.named_parameters() if p.requires_grad}


class Poison(L.Callback):
    """Makes the loss NaN (loss weights) or one LoRA gradient Inf at chosen global steps, and records
    whether each step changed the trainable weights."""

    def __init__(self, output_dir, nan_loss_at=(), inf_grad_at=()) -> None:
        self.output_dir, self.nan_loss_at, self.inf_grad_at = output_dir, set(nan_loss_at), set(inf_grad_at)
        self.changed: dict[int, bool] = {}
        self.locked_during_fit: list[bool] = []
        self.weights_before: dict[int, dict[str, torch.Tensor]] = {}
        self.outputs_before: dict[int, dict[str, bytes]] = {}
        self._handle = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step = trainer.global_step
        self.weights_before[self.step] = trainable_state(pl_module)
        self.outputs_before[self.step] = folder_bytes(self.output_dir)
        self.locked_during_fit.append(lock_path(self.output_dir).exists())
        if self.step in self.nan_loss_at:
            batch["loss_weights"].fill_(float("nan"))
        if self.step in self.inf_grad_at:  # the loss stays finite: only the gradient check can catch this
            param = next(p for n, p in pl_module.peft_model.named_parameters() if "lora_B" in n)
            self._handle = param.register_hook(lambda grad: torch.full_like(grad, float("inf")))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        after = trainable_state(pl_module)
        before = self.weights_before[self.step]
        self.changed[self.step] = any(not torch.equal(before[n], after[n]) for n in before)


def folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.exists() else {}


def make_fit(tiny_model_dir, tmp_path, max_bad_steps: int, max_steps: int, callbacks=()):
    module = StyleAlignmentModule(model_name_or_path=str(tiny_model_dir), kl_beta=0.0, learning_rate=1e-2,
                                  warmup_steps=0, output_dir=str(tmp_path / "style"), max_bad_steps=max_bad_steps)
    data = StyleDataModule(corpus=str(REPO / "data" / "sample" / "style"), max_length=64, batch_size=2,
                           val_fraction=0.2, model_name_or_path=str(tiny_model_dir))
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path, callbacks=list(callbacks),
                        enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint)
                                                 for c in callbacks))
    return module, data, trainer


def test_bad_steps_are_skipped_and_training_continues(tiny_model_dir, tmp_path, caplog):
    poison = Poison(tmp_path / "style", nan_loss_at=[1], inf_grad_at=[3])
    module, data, trainer = make_fit(tiny_model_dir, tmp_path, max_bad_steps=2, max_steps=6, callbacks=[poison])
    with caplog.at_level(logging.WARNING, logger="wuxia_lightning.callbacks.nonfinite"):
        trainer.fit(module, datamodule=data)

    assert trainer.global_step == 6
    assert poison.changed == {0: True, 1: False, 2: True, 3: False, 4: True, 5: True}
    guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
    assert guard.skipped_total == 2 and guard.max_bad_steps == 2
    warnings = [r.getMessage() for r in caplog.records if "optimizer step skipped" in r.getMessage()]
    assert len(warnings) == 2
    assert "non-finite loss" in warnings[0] and "global step 1" in warnings[0] and "batch_idx 1" in warnings[0]
    assert "non-finite gradient" in warnings[1] and "global step 3" in warnings[1]
    assert all(poison.locked_during_fit) and not lock_path(tmp_path / "style").exists()
    assert (tmp_path / "style" / "adapter_model.safetensors").is_file()


def test_consecutive_bad_steps_stop_with_last_good_outputs_intact(tiny_model_dir, tmp_path):
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1,
                                                      save_last=True)
    poison = Poison(tmp_path / "style", nan_loss_at=[2, 3])
    module, data, trainer = make_fit(tiny_model_dir, tmp_path, max_bad_steps=2, max_steps=8,
                                     callbacks=[poison, checkpoints])
    with pytest.raises(NonFiniteTrainingError, match=r"2 optimizer steps in a row .* global step 3"):
        trainer.fit(module, datamodule=data)

    assert poison.changed == {0: True, 1: True, 2: False}  # step 3 raised before its optimizer step
    good = poison.weights_before[2]  # the weights after the last good step
    assert all(torch.equal(good[n], p.detach()) for n, p in module.peft_model.named_parameters() if n in good)
    # the adapter folder is byte for byte the one written after the last good step
    assert poison.outputs_before[2] and folder_bytes(tmp_path / "style") == poison.outputs_before[2]
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    assert {k.removeprefix("peft_model.") for k in last["state_dict"]} == set(good)
    assert all(torch.equal(last["state_dict"][f"peft_model.{n}"], good[n]) for n in good)
    assert not lock_path(tmp_path / "style").exists()  # released although fit failed


def test_fit_refuses_an_output_folder_another_live_run_writes(tiny_model_dir, tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        lock = lock_path(tmp_path / "style")
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        module, data, trainer = make_fit(tiny_model_dir, tmp_path, max_bad_steps=2, max_steps=2)
        with pytest.raises(UserInputError, match=f"pid {sleeper.pid}"):
            trainer.fit(module, datamodule=data)
        assert module.peft_model is None  # refused at setup, before the base model was loaded
        assert trainer.global_step == 0 and not (tmp_path / "style").exists()
        assert json.loads(lock.read_text())["pid"] == sleeper.pid  # the holder's lock is left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_batch_description_names_the_samples_where_the_batch_carries_them():
    plain = {"input_ids": torch.zeros(2, 3)}
    assert describe_batch(plain, 4) == "batch_idx 4"
    carried = {"input_ids": torch.zeros(2, 3), "epoch": torch.tensor([1, 1]), "index": torch.tensor([17, 5])}
    assert describe_batch(carried, 4) == "batch_idx 4 samples (epoch, index) (1, 17), (1, 5)"
    nested = {"chat": plain, "replay": {"epoch": torch.tensor([0]), "index": torch.tensor([9])}}
    assert describe_batch(nested, 0) == "batch_idx 0 replay samples (epoch, index) (0, 9)"


def test_max_bad_steps_must_be_positive():
    with pytest.raises(ValueError, match="max_bad_steps"):
        NonFiniteGuard(0)
