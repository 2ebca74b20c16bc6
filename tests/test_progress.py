"""ProgressLines: plain progress lines when stdout is not a terminal, at the configured step interval."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch

from wuxia_lightning.callbacks.progress import ProgressLines, batch_tokens

LINE = re.compile(r"^step (\d+)/12 \(epoch (\d+)\) \| loss ([\d.]+) \| ([\d,]+) tokens/s \| elapsed \S+ \| ETA \S+$")


class TokenModel(L.LightningModule):
    """A linear model fed dict batches with an attention mask, as the real data modules produce."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch["x"]).pow(2).mean()
        self.log("train/loss", loss, on_step=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def batches(count: int = 6, tokens: int = 5) -> list[dict[str, torch.Tensor]]:
    mask = torch.zeros(2, 8, dtype=torch.long)
    mask[0, :tokens] = 1  # a padded batch: only the mask's ones are tokens
    return [{"x": torch.randn(2, 4), "attention_mask": mask} for _ in range(count)]


def fit(tmp_path, callback: ProgressLines, epochs: int = 2) -> None:
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[callback])
    trainer.fit(TokenModel(), train_dataloaders=torch.utils.data.DataLoader(batches(), batch_size=None))


def test_a_line_every_n_steps_with_step_loss_tokens_and_eta(tmp_path, capsys):
    fit(tmp_path, ProgressLines(when="always", every_n_steps=4, every_n_seconds=0))
    lines = capsys.readouterr().out.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m[1]) for m in parsed] == [4, 8, 12]
    assert [int(m[2]) for m in parsed] == [0, 1, 1]  # 6 batches an epoch: step 8 is in the second one
    assert all(float(m[3]) >= 0 and int(m[4].replace(",", "")) > 0 for m in parsed)


def test_the_last_steps_get_a_closing_line(tmp_path, capsys):
    fit(tmp_path, ProgressLines(when="always", every_n_steps=5, every_n_seconds=0))
    steps = [int(LINE.match(line)[1]) for line in capsys.readouterr().out.splitlines()]
    assert steps == [5, 10, 12]


def test_auto_prints_when_stdout_is_not_a_terminal_and_never_is_silent(tmp_path, capsys, monkeypatch):
    fit(tmp_path, ProgressLines(when="auto", every_n_steps=6, every_n_seconds=0))  # capsys: not a tty
    assert len(capsys.readouterr().out.splitlines()) == 2
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    fit(tmp_path, ProgressLines(when="auto", every_n_steps=6, every_n_seconds=0))
    fit(tmp_path, ProgressLines(when="never", every_n_steps=1, every_n_seconds=0))
    assert capsys.readouterr().out == ""


def test_tokens_are_the_attention_mask_of_the_chat_part():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert batch_tokens({"attention_mask": mask}) == 4
    assert batch_tokens({"chat": {"attention_mask": mask}, "style": {"attention_mask": mask * 0 + 1}}) == 4
    assert batch_tokens([torch.ones(3)]) == 0  # no mask: tokens/s is left out of the line


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="when"):
        ProgressLines(when="sometimes")
    with pytest.raises(ValueError, match="every_n_steps"):
        ProgressLines(every_n_steps=-1)
