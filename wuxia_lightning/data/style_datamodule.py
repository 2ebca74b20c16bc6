"""Stage-1 data: raw novels → cached token windows → dynamically masked batches."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from wuxia_lightning.batch import MaskMode
from wuxia_lightning.data.collate import collate_right_padded
from wuxia_lightning.data.corpus import IngestReport, resolve_sources, split_train_val
from wuxia_lightning.data.masking import DynamicMasker, InfillTokens, MaskingConfig
from wuxia_lightning.data.resumable import EpochIndexSampler, ResumableDataLoader, TrainLoaderPositions
from wuxia_lightning.data.token_cache import IngestSettings, TokenizedDocument, load_or_build_many
from wuxia_lightning.data.windows import TokenStream, build_stream
from wuxia_lightning.errors import UserInputError
from wuxia_lightning.io import atomic_write, cache_root, strict_json
from wuxia_lightning.pretrained.tokenizer import (
    check_max_length,
    document_end_id,
    leading_special_ids,
    load_tokenizer,
)
from wuxia_lightning.tokens import IGNORE_INDEX

log = logging.getLogger(__name__)
INGEST_REPORT = "ingest_report.json"
MIN_WINDOW_TOKENS = 8  # fewer tokens of text per window is a misconfiguration, not a training run


class MaskedWindowDataset(Dataset):
    """Indexed by (epoch, index): the masking draw depends on both, never on worker or rank.

    ``leading_ids``: tokens put before every sample, never a target (Gemma's ``<bos>``: its models expect
    every sequence to start with it); the windows are that much shorter than ``max_length``.
    """

    def __init__(self, stream: TokenStream, masker: DynamicMasker | None, fixed_epoch: int = 0,
                 leading_ids: tuple[int, ...] | list[int] = ()) -> None:
        self.stream, self.masker, self.fixed_epoch = stream, masker, fixed_epoch
        self.leading_ids = np.asarray(leading_ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (self.fixed_epoch, key)
        ids, function_word, special = self.stream.window(index)
        if self.masker is None:  # plain causal LM (general-domain validation)
            ids64 = ids.astype(np.int64)
            sample = {"input_ids": ids64, "labels": ids64.copy(), "loss_weights": np.ones(len(ids), np.float32),
                      "mode": int(MaskMode.NONE), "masked_tokens": 0, "shortfall_tokens": 0}
        else:
            sample = self.masker(ids, function_word, special, epoch, index)
        if len(self.leading_ids):
            sample = with_leading_ids(sample, self.leading_ids)
        # The sample's identity travels with it: logs and the non-finite guard can name it.
        return {**sample, "epoch": epoch, "index": index}


def with_leading_ids(sample: dict, leading_ids: np.ndarray) -> dict:
    """``sample`` with ``leading_ids`` in front: inputs only (label ignored, loss weight 0)."""
    n = len(leading_ids)
    return {**sample, "input_ids": np.concatenate([leading_ids, sample["input_ids"]]),
            "labels": np.concatenate([np.full(n, IGNORE_INDEX, dtype=np.int64), sample["labels"]]),
            "loss_weights": np.concatenate([np.zeros(n, dtype=np.float32), sample["loss_weights"]])}


def check_fills_a_window(stream: TokenStream, window: int, max_length: int, corpus: str | list[str]) -> None:
    """A corpus shorter than one window trains on a single short sequence every step: almost certainly
    the wrong folder or a truncated file, so say so instead of "training" on it."""
    if len(stream.ids) < window:
        raise UserInputError(f"the training part of the corpus has {len(stream.ids)} tokens, less than one "
                             f"training window ({window} tokens at --data.max_length={max_length}); give more text or a smaller "
                             "--data.max_length", path=str(corpus), field="corpus")


class StyleDataModule(L.LightningDataModule):
    """Cuts the corpus into windows and masks each window anew every epoch (span / function word / none).

    Args:
        corpus: style corpus — a file, folder or glob, or a list of them.
        general_corpus: optional general-domain text, validated as plain LM (the forgetting check); the
            sampled continuations are also scored by a classifier of style vs this text (P(style)).
        max_length: tokens per training sequence, infill tokens included.
        batch_size: windows per batch (per device; ``trainer.accumulate_grad_batches`` multiplies it).
        num_workers: DataLoader worker processes.
        seed: the masking draws and the sampling order: every random choice of a sample comes from
            (seed, epoch, index).
        val_fraction: share of documents (chapters) held out; the split is by document, never by window.
        to_simplified: convert Traditional → Simplified with OpenCC before anything else.
        drop_modern: drop paragraphs with modern vocabulary (the seed's 去除现代词汇).
        span_prob / function_word_prob / none_prob: shares of the three masking modes.
        mask_rate: share of a window's tokens hidden in a masked sample.
        mean_span_length: mean of the geometric span length (span mode).
        hidden_weight / visible_weight: loss weights of hidden spans and of visible text.
        cache_dir: where tokenized files are cached (default ~/.cache/wuxia_lightning/tokens).
        model_name_or_path / tokenizer_name_or_path: linked from the model section by the CLI.
    """

    def __init__(self, corpus: str | list[str] = "data/sample", general_corpus: str | list[str] | None = None,
                 max_length: int = 512, batch_size: int = 4, num_workers: int = 0, val_fraction: float = 0.05,
                 seed: int = 0, to_simplified: bool = True, drop_modern: bool = False,
                 span_prob: float = 0.6, function_word_prob: float = 0.3, none_prob: float = 0.1,
                 mask_rate: float = 0.15, mean_span_length: float = 3.0, hidden_weight: float = 1.0,
                 visible_weight: float = 1.0, cache_dir: str | None = None,
                 model_name_or_path: str = "tiny-qwen2", tokenizer_name_or_path: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.masking = MaskingConfig(span_prob, function_word_prob, none_prob, mask_rate, mean_span_length,
                                     hidden_weight, visible_weight, seed)
        self.settings = IngestSettings(to_simplified=to_simplified, drop_modern=drop_modern)
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "tokens"
        self.tokenizer = None
        self.leading_ids: list[int] = []
        self.streams: dict[str, TokenStream] = {}
        self.split_documents: dict[str, list] = {}
        self.positions = TrainLoaderPositions()

    def state_dict(self) -> dict:
        """Where the training loader stands in its epoch: a run resumed mid-epoch continues there."""
        return {"train_loaders": self.positions.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.positions.load_state_dict(state_dict.get("train_loaders", {}))

    def prepare_data(self) -> None:
        """Runs on one process per node: build the token caches once (jieba + tokenizer)."""
        tokenizer = load_tokenizer(self.hparams.model_name_or_path, self.hparams.tokenizer_name_or_path)
        for sources in self._all_sources():
            load_or_build_many(resolve_sources(sources), tokenizer, self.settings, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.streams:
            return
        check_max_length(self.hparams.model_name_or_path, self.hparams.max_length,
                         self.hparams.tokenizer_name_or_path)
        self.tokenizer = load_tokenizer(self.hparams.model_name_or_path, self.hparams.tokenizer_name_or_path)
        self.leading_ids = leading_special_ids(self.tokenizer)
        text_length = self.hparams.max_length - len(self.leading_ids)
        window = self.masking.window_length(text_length)
        if window < MIN_WINDOW_TOKENS:
            raise UserInputError(f"--data.max_length={self.hparams.max_length} with --data.mask_rate="
                                 f"{self.hparams.mask_rate} leaves {window} tokens of text per window after room for "
                                 f"the infill tokens; raise max_length or lower mask_rate", field="mask_rate")
        documents, reports = self._load(self.hparams.corpus)
        train_docs, val_docs = split_train_val([d.document for d in documents], self.hparams.val_fraction,
                                               self.hparams.seed)
        self.split_documents = {"train": train_docs, "val": val_docs}
        by_identity = {(d.document.source, d.document.index): d for d in documents}
        eos = document_end_id(self.tokenizer)
        self.streams["train"] = build_stream([by_identity[(d.source, d.index)] for d in train_docs], eos, window)
        check_fills_a_window(self.streams["train"], window, self.hparams.max_length, self.hparams.corpus)
        self.streams["val"] = build_stream([by_identity[(d.source, d.index)] for d in val_docs], eos, window)
        if self.hparams.general_corpus:
            general, _ = self._load(self.hparams.general_corpus)
            self.streams["general"] = build_stream(general, eos, text_length)
        self.ingest_reports = reports
        self._report_ingest(IngestReport(reports))
        self.masker = DynamicMasker(self.masking, InfillTokens.from_tokenizer(self.tokenizer),
                                    text_length)
        log.info("style corpus: %d train / %d val documents, %d / %d windows of %d tokens", len(train_docs),
                 len(val_docs), len(self.streams["train"]), len(self.streams["val"]), window)

    def _report_ingest(self, report: IngestReport) -> None:
        """What reading the corpus found — encoding per file, T→S conversion, lines each cleaning rule
        dropped — on the console, and as ``ingest_report.json`` in the run's log folder."""
        log.info("style corpus, as read:\n%s", report.format())
        trainer = self.trainer
        log_dir = trainer.log_dir if trainer is not None and trainer.loggers else None  # a collective: all ranks
        if log_dir and trainer.is_global_zero:
            path = Path(log_dir) / INGEST_REPORT
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda temporary: temporary.write_text(strict_json(report.to_dict(), indent=2),
                                                                       encoding="utf-8"))
            log.info("wrote %s", path)

    def corpus_texts(self, split: str = "train") -> list[str]:
        """Cleaned texts of one split's documents (for style metrics: the corpus the style comes from)."""
        from wuxia_lightning.data.corpus import read_corpus

        # By resolved path: the token cache keeps the path a file was first read under (absolute in one run,
        # relative in the next), which must still match the same file read here.
        wanted = {(str(Path(d.source).resolve()), d.index) for d in self.split_documents[split]}
        documents, _ = read_corpus(self.hparams.corpus, to_simplified=self.settings.to_simplified,
                                   drop_modern=self.settings.drop_modern, modern_words=self.settings.modern_words)
        return [d.text for d in documents if (str(Path(d.source).resolve()), d.index) in wanted]

    def general_texts(self) -> list[str]:
        """Cleaned texts of the general corpus (empty without one): what the style is contrasted with."""
        from wuxia_lightning.data.corpus import read_corpus

        if not self.hparams.general_corpus:
            return []
        documents, _ = read_corpus(self.hparams.general_corpus, to_simplified=self.settings.to_simplified)
        return [d.text for d in documents]

    def train_dataloader(self) -> DataLoader:
        dataset = MaskedWindowDataset(self.streams["train"], self.masker, leading_ids=self.leading_ids)
        sampler = EpochIndexSampler(dataset, num_replicas=self._world_size(), rank=self._rank(), shuffle=True,
                                    seed=self.hparams.seed)
        # Resumable: a run killed mid-epoch continues at the next unseen window of the same order.
        return self.positions.track("train", self._loader(dataset, sampler, ResumableDataLoader))

    def val_dataloader(self) -> list[DataLoader]:
        """Style validation with a fixed draw (epoch 0), plus general-domain text as plain LM if given."""
        loaders = [self._eval_loader(MaskedWindowDataset(self.streams["val"], self.masker,
                                                         leading_ids=self.leading_ids))]
        if "general" in self.streams:
            loaders.append(self._eval_loader(MaskedWindowDataset(self.streams["general"], None,
                                                                 leading_ids=self.leading_ids)))
        return loaders

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    @property
    def val_loader_names(self) -> list[str]:
        return ["style"] + (["general"] if "general" in self.streams else [])

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        sampler = DistributedSampler(dataset, num_replicas=self._world_size(), rank=self._rank(), shuffle=False)
        return self._loader(dataset, sampler)

    def _loader(self, dataset: Dataset, sampler, loader_class: type[DataLoader] = DataLoader) -> DataLoader:
        pad_id = self.tokenizer.pad_token_id
        return loader_class(dataset, batch_size=self.hparams.batch_size, sampler=sampler,
                            num_workers=self.hparams.num_workers,
                            collate_fn=partial(collate_right_padded, pad_id=pad_id),
                            persistent_workers=self.hparams.num_workers > 0)

    def _load(self, sources: str | list[str]) -> tuple[list[TokenizedDocument], list]:
        return load_or_build_many(resolve_sources(sources), self.tokenizer, self.settings, self.cache_dir)

    def _all_sources(self) -> list[str | list[str]]:
        return [s for s in (self.hparams.corpus, self.hparams.general_corpus) if s]

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0
