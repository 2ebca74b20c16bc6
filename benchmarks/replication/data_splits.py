"""Held-out splits by document for the replication: whole chapters, whole paragraphs, whole conversations.

Everything is written as plain files under ``OUT/data`` so each later step (and a reader) sees exactly
what was trained on and what was held out. A user's own held-out paths replace the default splits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from wuxia_lightning.data.chat_formats import load_conversations
from wuxia_lightning.data.corpus import held_out_by_hash, read_corpus, split_train_val
from wuxia_lightning.io import atomic_write

SHARDS = 16  # general text is written as shards so the data module's document split holds out only one


@dataclass
class Splits:
    style_train: list[str]        # files, given to StyleDataModule (which holds out whole chapters itself)
    style_heldout_texts: list[str]
    general_train: list[str]      # shard files: modern Chinese paragraphs + instruction turns (train only)
    general_heldout_texts: list[str]
    instruct_train: str
    instruct_heldout: str


def _split_by_hash(items: list, keys: list[str], fraction: float) -> tuple[list, list]:
    """(train, held out) by each item's key hash; with two or more items each side gets at least one."""
    heldout = [held_out_by_hash(k, fraction) for k in keys]
    if len(items) >= 2 and not any(heldout):
        heldout[min(range(len(keys)), key=lambda i: hashlib.blake2b(keys[i].encode()).digest())] = True
    return ([x for x, h in zip(items, heldout, strict=True) if not h],
            [x for x, h in zip(items, heldout, strict=True) if h])


def _write_lines(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _general_paragraphs(path_spec: str) -> list[str]:
    documents, _ = read_corpus(path_spec, to_simplified=True)
    return [line for d in documents for line in d.text.split("\n") if len(line) >= 20]


def build_splits(args, out: Path, style_val_fraction: float, instruct_limit: int, heldout_limit: int) -> Splits:
    data = out / "data"
    style_docs, _ = read_corpus(args.style_train, to_simplified=True)
    if args.style_heldout:
        heldout_docs, _ = read_corpus(args.style_heldout, to_simplified=True)
    else:  # the same deterministic chapter split the stage-1 data module makes
        _, heldout_docs = split_train_val(style_docs, style_val_fraction, seed=0)
    paragraphs = _general_paragraphs(args.general_train)
    if args.general_heldout:
        general_heldout = _general_paragraphs(args.general_heldout)
    else:
        paragraphs, general_heldout = _split_by_hash(paragraphs, paragraphs, 0.05)
    train_dialogues, _ = load_conversations(args.instruct_train)
    if args.instruct_heldout:
        heldout_dialogues, _ = load_conversations(args.instruct_heldout)
    else:
        keys = [json.dumps(d, ensure_ascii=False) for d in train_dialogues]
        train_dialogues, heldout_dialogues = _split_by_hash(train_dialogues, keys, 0.03)
    turns = [m["content"].replace("\n", " ") for d in train_dialogues for m in d if m["role"] != "system"]
    general_train = _write_shards(data / "general_train", paragraphs + turns)
    instruct_train = data / "instruct_train.jsonl"
    instruct_heldout = data / "instruct_heldout.jsonl"
    _write_lines(instruct_train, [json.dumps({"messages": d}, ensure_ascii=False)
                                  for d in train_dialogues[:instruct_limit]])
    _write_lines(instruct_heldout, [json.dumps({"messages": d}, ensure_ascii=False)
                                    for d in heldout_dialogues[:heldout_limit]])
    return Splits(style_train=[str(p) for p in _source_files(args.style_train)],
                  style_heldout_texts=[d.text for d in heldout_docs], general_train=general_train,
                  general_heldout_texts=general_heldout, instruct_train=str(instruct_train),
                  instruct_heldout=str(instruct_heldout))


def _write_shards(folder: Path, lines: list[str]) -> list[str]:
    paths = []
    for shard in range(SHARDS):
        path = folder / f"shard_{shard:02d}.txt"
        _write_lines(path, lines[shard::SHARDS])
        paths.append(str(path))
    return paths


def _source_files(spec: str) -> list[Path]:
    from wuxia_lightning.data.corpus import resolve_sources

    return resolve_sources(spec)
