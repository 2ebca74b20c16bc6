"""Stage-2 data: chat files (any of four formats) → ChatML token ids with assistant-only labels."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from wuxia_lightning.data.chat_encoding import EncodedDialogue, encode_dialogues
from wuxia_lightning.data.chat_formats import format_reports, load_conversations
from wuxia_lightning.data.collate import collate_right_padded
from wuxia_lightning.data.presets import resolve_system_prompt
from wuxia_lightning.data.resumable import (
    EpochIndexSampler,
    ResumableDataLoader,
    ResumableSampler,
    TrainLoaderPositions,
)
from wuxia_lightning.errors import UserInputError
from wuxia_lightning.pretrained.tokenizer import check_max_length, ensure_chat_template, load_tokenizer

log = logging.getLogger(__name__)


class EncodedDialogues(Dataset):
    """Indexed by ``index`` or by (epoch, index) from :class:`EpochIndexSampler`; each sample names both."""

    def __init__(self, examples: Sequence[EncodedDialogue]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        example = self.examples[index]
        ids = np.asarray(example.input_ids, dtype=np.int64)
        return {"input_ids": ids, "labels": np.asarray(example.labels, dtype=np.int64), "epoch": epoch,
                "index": index}


class CycledWindows(Dataset):
    """``length`` items drawn from ``windows`` in a fixed shuffled order, wrapping around when the corpus is
    shorter than the chat data (and using only part of it when longer)."""

    def __init__(self, windows: Dataset, length: int, seed: int = 0) -> None:
        self.windows, self.length = windows, length
        self.order = np.random.default_rng(seed).permutation(len(windows))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.windows[int(self.order[index % len(self.order)])]


class PromptList(Dataset):
    """Prompts for ``predict``: each item is a list of chat messages ending with the user's turn."""

    def __init__(self, conversations: list[list[dict[str, str]]]) -> None:
        self.conversations = conversations

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> list[dict[str, str]]:
        return self.conversations[index]


def read_prompts(path: str, system: str | None) -> list[list[dict[str, str]]]:
    """Prompts as chats ending with a user turn.

    ``.txt``: one prompt per line. JSONL with ``prompt`` (text) or ``messages`` (a chat ending with the
    user). Any chat-data file (the four training formats): each dialogue up to its last user turn.
    """

    file = Path(path)
    if not file.exists():
        raise UserInputError("prompt file not found", path=path)
    prefix = [{"role": "system", "content": system}] if system else []
    lines = file.read_text(encoding="utf-8").splitlines()
    if file.suffix == ".txt":
        prompts = [prefix + [{"role": "user", "content": line.strip()}] for line in lines if line.strip()]
    elif _is_prompt_record(next((line for line in lines if line.strip()), "")):
        prompts = [_prompt_from_record(line, prefix, path, number)
                   for number, line in enumerate(lines, start=1) if line.strip()]
    else:  # a chat data file: drop each dialogue's final assistant reply
        dialogues, _ = load_conversations(path, default_system=system)
        prompts = [dialogue[:-1] for dialogue in dialogues]
    if not prompts:
        raise UserInputError("no prompts in file", path=path)
    return prompts


def _is_prompt_record(line: str) -> bool:
    import json

    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and ("prompt" in record or "messages" in record) and len(record) <= 2


def _prompt_from_record(line: str, prefix: list[dict[str, str]], path: str, number: int) -> list[dict[str, str]]:
    import json

    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserInputError(f"invalid JSON ({error.msg})", path=path, line=number) from error
    if isinstance(record, dict) and isinstance(record.get("prompt"), str):
        return prefix + [{"role": "user", "content": record["prompt"]}]
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        raise UserInputError("expected a string 'prompt' or a non-empty list 'messages' of {role, content}",
                             path=path, line=number, field="prompt")
    return messages if messages[0].get("role") == "system" else prefix + messages


class InstructDataModule(L.LightningDataModule):
    """Chat data for stage 2 and prompts for ``predict``.

    Args:
        train_files / val_files: JSON/JSONL files, folders or globs; formats `conversations`, ShareGPT,
            OpenAI `messages` or alpaca, detected per file.
        prompts: prompts for ``predict`` (.txt one per line, or JSONL with `prompt` / `messages`).
        max_length: tokens per example; longer dialogues keep whole turns (counted), never a cut reply.
        batch_size: dialogues per batch (per device; ``trainer.accumulate_grad_batches`` multiplies it).
        num_workers: DataLoader worker processes.
        preset: system-prompt preset (e.g. `wuxia`, `elegant_style`) for dialogues and prompts without one.
        presets_file: YAML of presets (default: the packaged one).
        replay_corpus: style corpus (file, folder, glob) whose windows are served beside every chat batch
            (``batch["replay"]``), for ``InstructModule(replay_beta>0)``: KL on them keeps the style.
        replay_batch_size / replay_max_length: replay windows per chat batch and their length in tokens.
        model_name_or_path / tokenizer_name_or_path: linked from the model section by the CLI.
        seed: the chat data's shuffle order (a fresh order each epoch, the same in every run).
    """

    def __init__(self, train_files: str | list[str] | None = None, val_files: str | list[str] | None = None,
                 prompts: str | None = None, max_length: int = 1024, batch_size: int = 4, num_workers: int = 0,
                 preset: str | None = None, presets_file: str | None = None,
                 replay_corpus: str | list[str] | None = None, replay_batch_size: int = 4,
                 replay_max_length: int = 256, model_name_or_path: str = "tiny-qwen2", tokenizer_name_or_path: str | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.positions = TrainLoaderPositions()
        self.tokenizer = None
        self.datasets: dict[str, Dataset] = {}
        self.encoding_stats: dict[str, dict] = {}
        self.val_prompts: list[list[dict[str, str]]] = []

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            check_max_length(self.hparams.model_name_or_path, self.hparams.max_length,
                         self.hparams.tokenizer_name_or_path)
            self.tokenizer = load_tokenizer(self.hparams.model_name_or_path, self.hparams.tokenizer_name_or_path)
            ensure_chat_template(self.tokenizer)
        system = resolve_system_prompt(self.hparams.preset, self.hparams.presets_file)
        if stage in ("fit", None) and self.hparams.train_files:
            self.datasets["train"] = self._encode("train", self.hparams.train_files, system)
        if stage in ("fit", "validate", None) and self.hparams.val_files:
            self.datasets["val"] = self._encode("val", self.hparams.val_files, system)
        if stage == "predict":
            if not self.hparams.prompts:
                raise UserInputError("predict needs --data.prompts FILE")
            self.datasets["predict"] = PromptList(read_prompts(self.hparams.prompts, system))
        if stage == "fit" and "train" not in self.datasets:
            raise UserInputError("fit needs --data.train_files")
        if stage == "fit" and self.hparams.replay_corpus and "replay" not in self.datasets:
            self.datasets["replay"] = self._replay_windows()

    def _replay_windows(self) -> Dataset:
        """Plain-LM windows of the style corpus, cycled to one replay batch per chat batch."""
        from wuxia_lightning.data.style_datamodule import MaskedWindowDataset, StyleDataModule

        hp = self.hparams
        style = StyleDataModule(corpus=hp.replay_corpus, max_length=hp.replay_max_length, val_fraction=0.01,
                                span_prob=0.0, function_word_prob=0.0, none_prob=1.0,
                                model_name_or_path=hp.model_name_or_path,
                                tokenizer_name_or_path=hp.tokenizer_name_or_path)
        style.prepare_data()
        style.setup("fit")
        chat_batches = -(-len(self.datasets["train"]) // hp.batch_size)
        return CycledWindows(MaskedWindowDataset(style.streams["train"], masker=None, leading_ids=style.leading_ids),
                             chat_batches * hp.replay_batch_size)

    def _encode(self, split: str, files: str | list[str], system: str | None) -> Dataset:
        dialogues, reports = load_conversations(files, default_system=system)
        log.info("%s data:\n%s", split, format_reports(reports))
        if split == "val":  # validation also generates replies to these prompts (stop rate, style)
            self.val_prompts = [dialogue[:-1] for dialogue in dialogues]
        examples, stats = encode_dialogues(self.tokenizer, dialogues, self.hparams.max_length)
        self.encoding_stats[split] = stats.to_dict()
        log.info("%s encoding: %s", split, stats.to_dict())
        if not examples:
            raise UserInputError(f"no {split} example fits max_length={self.hparams.max_length}", path=str(files))
        return EncodedDialogues(examples)

    def state_dict(self) -> dict:
        """Where the training loaders stand in their epoch: a run resumed mid-epoch continues there."""
        return {"train_loaders": self.positions.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.positions.load_state_dict(state_dict.get("train_loaders", {}))

    def train_dataloader(self):
        # Seeded per-epoch order (not RandomSampler's global RNG) and resumable positions: a killed run
        # resumes at the next unseen dialogue.
        dataset = self.datasets["train"]
        sampler = EpochIndexSampler(dataset, num_replicas=self._world_size(), rank=self._rank(), shuffle=True,
                                    seed=self.hparams.seed)
        chat = self.positions.track("chat", self._resumable(dataset, sampler, self.hparams.batch_size))
        if "replay" not in self.datasets:
            return chat
        from lightning.pytorch.utilities import CombinedLoader

        replay_sampler = ResumableSampler(self.datasets["replay"], num_replicas=self._world_size(), rank=self._rank(),
                                          shuffle=False)
        replay = self.positions.track("replay", self._resumable(self.datasets["replay"], replay_sampler,
                                                                self.hparams.replay_batch_size))
        # Equal lengths by construction (CycledWindows), so "min_size" drops nothing of the chat data.
        return CombinedLoader({"chat": chat, "replay": replay}, mode="min_size")

    def _resumable(self, dataset: Dataset, sampler: DistributedSampler, batch_size: int) -> ResumableDataLoader:
        return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                   num_workers=self.hparams.num_workers,
                                   collate_fn=partial(collate_right_padded, pad_id=self.tokenizer.pad_token_id))

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.datasets["val"], shuffle=False) if "val" in self.datasets else []

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["predict"], batch_size=self.hparams.batch_size, collate_fn=list)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers,
                          collate_fn=partial(collate_right_padded, pad_id=self.tokenizer.pad_token_id))
