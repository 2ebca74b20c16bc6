"""Stage 2 with style replay: KL(style+instruct ‖ style only) on style windows keeps the style on purpose."""

from __future__ import annotations

import lightning as L
import torch
from conftest import REPO
from test_instruct import DIALOGUES, build, style_adapter  # noqa: F401 - pytest fixture

from wuxia_lightning.data.instruct_datamodule import CycledWindows, InstructDataModule

STYLE_CORPUS = REPO / "data" / "sample" / "style"


def replay_batch(tiny_model_dir, batch_size: int = 2) -> tuple[InstructDataModule, dict]:
    data = InstructDataModule(train_files=str(DIALOGUES), max_length=192, batch_size=4,
                              replay_corpus=str(STYLE_CORPUS), replay_batch_size=batch_size,
                              replay_max_length=64, model_name_or_path=str(tiny_model_dir))
    data.setup("fit")
    loader = data.train_dataloader()
    return data, next(iter(loader))[0]


def test_replay_kl_is_zero_while_instruct_is_zero(tiny_model_dir, style_adapter):  # noqa: F811
    module = build(tiny_model_dir, style_adapter, replay_beta=1.0)
    _, batch = replay_batch(tiny_model_dir)
    # instruct's B starts at zero: the same distribution, KL zero up to float rounding of Σp·log p − Σp·log q
    assert abs(float(module.replay_kl(batch["replay"]).detach())) < 1e-6
    with torch.no_grad():
        for name, param in module.peft_model.named_parameters():
            if ".instruct." in name and "lora_B" in name:
                param.normal_(std=0.5)
    assert float(module.replay_kl(batch["replay"]).detach()) > 1e-4


def test_replay_gradients_reach_only_instruct_and_style_stays_active(tiny_model_dir, style_adapter):  # noqa: F811
    module = build(tiny_model_dir, style_adapter, replay_beta=1.0)
    with torch.no_grad():
        for name, param in module.peft_model.named_parameters():
            if ".instruct." in name and "lora_B" in name:
                param.normal_(std=0.5)
    _, batch = replay_batch(tiny_model_dir)
    module.replay_kl(batch["replay"]).backward()
    with_grad = {n for n, p in module.peft_model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(".instruct." in n for n in with_grad)
    assert module.peft_model.base_model.active_adapters == ["style", "instruct"]


def test_combined_batches_cover_every_chat_example_once_per_epoch(tiny_model_dir):
    data, _ = replay_batch(tiny_model_dir, batch_size=3)
    chat_batches = -(-len(data.datasets["train"]) // 4)
    assert len(data.datasets["replay"]) == chat_batches * 3
    loader = data.train_dataloader()
    iter(loader)  # a CombinedLoader knows its length once iterated
    assert len(loader) == chat_batches


def test_cycled_windows_wrap_around_a_short_corpus():
    windows = CycledWindows(list(range(5)), length=12)
    items = [windows[i] for i in range(12)]
    assert sorted(items[:5]) == list(range(5)) and items[5:10] == items[:5]


def test_fit_with_replay_trains_instruct_and_keeps_style_bit_identical(tiny_model_dir, style_adapter):  # noqa: F811
    module = build(tiny_model_dir, style_adapter, replay_beta=1.0)
    style_before = {n: p.detach().clone() for n, p in module.peft_model.named_parameters() if ".style." in n}
    data, _ = replay_batch(tiny_model_dir)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    params = dict(module.peft_model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in style_before.items())
    assert "train/replay_kl" in trainer.callback_metrics
