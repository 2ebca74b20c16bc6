#!/usr/bin/env python
"""Export our data and settings to LLaMA-Factory (dataset_info.json + two training YAMLs), for comparison.

    python scripts/train_llamafactory.py --style-corpus data/novels --instruct-files data/instruct \\
        --out llamafactory_export --model Qwen/Qwen2.5-7B
    llamafactory-cli train llamafactory_export/stage1_pt.yaml
    llamafactory-cli train llamafactory_export/stage2_sft.yaml

Written to --out:
  wuxia_pt.jsonl      one {"text": ...} per document (chapter), read and cleaned by our corpus reader
  wuxia_sft.jsonl     one {"conversations": [{"role", "content"}, ...]} per dialogue, from our chat loader
  dataset_info.json   wuxia_pt (pre-training, "columns": {"prompt": "text"}) and wuxia_sft (sharegpt
                      formatting with role/content tags; a leading system turn is the system prompt)
  stage1_pt.yaml      stage: pt, LoRA r=16 α=32 on all linear layers (our stage-1 defaults)
  stage2_sft.yaml     stage: sft, template qwen, a new LoRA r=64 α=128 over the stage-1 adapter

This is an APPROXIMATION of our pipeline, good for comparing results, not a re-implementation:
  * LLaMA-Factory's `pt` stage is plain causal language modelling: it has no KL-to-reference term
    (our β·KL(policy ‖ base) that limits forgetting) and no dynamic span / function-word masking with
    infilling; it packs the documents into cutoff_len blocks.
  * It has no stacked frozen adapter. With `create_new_adapter: true` (set here) it merges the stage-1
    adapter into the base weights and trains a new adapter on top: the same function as our frozen,
    active style adapter, up to rounding in bf16. On a quantised base it cannot merge and would instead
    go on training the stage-1 adapter itself (rank 16), so stage 2 is exported un-quantised.
  * Serving needs both adapters: pass `adapter_name_or_path: <stage1>,<stage2>` to llamafactory-cli
    chat/export (it merges them in order), or use the `export` line printed at the end.
Settings that LLaMA-Factory has (learning rate, warmup steps, epochs, batch, cutoff length) follow our
shipped 7B configs and can be edited in the YAMLs.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wuxia_lightning.errors import UserInputError, report_user_error
from wuxia_lightning.io import strict_json

PT_DATASET, SFT_DATASET = "wuxia_pt", "wuxia_sft"
PT_FILE, SFT_FILE = f"{PT_DATASET}.jsonl", f"{SFT_DATASET}.jsonl"
STAGE1_YAML, STAGE2_YAML = "stage1_pt.yaml", "stage2_sft.yaml"
OUTPUT_FILES = ("dataset_info.json", PT_FILE, SFT_FILE, STAGE1_YAML, STAGE2_YAML)
VAL_SIZE = 0.05
# LoRA and optimisation settings are read from our shipped configs, so the comparison trains what we train.
REPO = Path(__file__).resolve().parents[1]
STAGE1_CONFIG = REPO / "configs" / "qwen2.5-7b_style_qlora.yaml"
STAGE2_CONFIG = REPO / "configs" / "qwen3-8b-base_instruct_qlora.yaml"
SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"}
HEADER = ("# Written by scripts/train_llamafactory.py from wuxia_lightning data and settings.\n"
          "# An approximation of our pipeline for comparison: {note}\n")
PT_NOTE = "LLaMA-Factory's pt stage has no KL-to-reference term and no span / function-word masking."
SFT_NOTE = ("no stacked frozen adapter: create_new_adapter merges the stage-1 adapter into the base and "
            "trains a new one on top (un-quantised: on a 4-bit base LLaMA-Factory would keep training the "
            "stage-1 adapter instead).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style-corpus", nargs="+", required=True, help="novel files, folders or globs (stage 1)")
    parser.add_argument("--instruct-files", nargs="+", required=True,
                        help="instruction data: JSON / JSONL files, folders or globs (stage 2)")
    parser.add_argument("--out", required=True, help="folder for dataset_info.json, the data and the YAMLs")
    parser.add_argument("--model", default="Qwen/Qwen2.5-7B", help="base model (default: %(default)s)")
    parser.add_argument("--to-simplified", action=argparse.BooleanOptionalAction, default=True,
                        help="convert the corpus to Simplified Chinese, as our configs do (default: on)")
    parser.add_argument("--drop-modern", action="store_true", help="drop paragraphs with modern vocabulary")
    parser.add_argument("--preset", default=None,
                        help="system-prompt preset added to dialogues without one (e.g. wuxia)")
    parser.add_argument("--stage1-quantization", choices=("none", "4bit"), default="4bit",
                        help="QLoRA for stage 1, as configs/qwen2.5-7b_style_qlora.yaml (default: %(default)s)")
    parser.add_argument("--pt-cutoff-len", type=int, default=512, help="stage-1 block length (our max_length)")
    parser.add_argument("--sft-cutoff-len", type=int, default=1024, help="stage-2 example length (our max_length)")
    parser.add_argument("--overwrite", action="store_true", help="replace files written by an earlier export")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        counts = export(args)
    except UserInputError as error:
        return report_user_error(error)
    out = Path(args.out).resolve()
    print(f"wrote {out}: {counts['documents']} documents ({PT_DATASET}), {counts['dialogues']} dialogues "
          f"({SFT_DATASET}), {STAGE1_YAML}, {STAGE2_YAML}")
    for reason, number in counts["skipped"].items():
        print(f"skipped {number} dialogue(s) LLaMA-Factory cannot read: {reason}")
    print(f"next: llamafactory-cli train {out / STAGE1_YAML} && llamafactory-cli train {out / STAGE2_YAML}")
    print(f"chat: llamafactory-cli chat --model_name_or_path {args.model} --adapter_name_or_path "
          f"{stage_dir(out, 1)},{stage_dir(out, 2)} --template qwen --finetuning_type lora")
    return 0


def export(args: argparse.Namespace) -> dict[str, Any]:
    from wuxia_lightning.data.chat_formats import load_conversations
    from wuxia_lightning.data.corpus import read_corpus
    from wuxia_lightning.data.presets import resolve_system_prompt

    out = Path(args.out).resolve()  # absolute paths: llamafactory-cli may run from any folder
    for name in ("pt_cutoff_len", "sft_cutoff_len"):
        if getattr(args, name) < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be a positive number of tokens")
    check_outputs(out, args.overwrite)
    documents, _ = read_corpus(args.style_corpus, to_simplified=args.to_simplified, drop_modern=args.drop_modern)
    dialogues, _ = load_conversations(args.instruct_files,
                                      default_system=resolve_system_prompt(args.preset))
    kept, skipped = sharegpt_dialogues(dialogues)
    if not kept:
        raise UserInputError("no dialogue is in a form LLaMA-Factory reads (user/assistant turns in turn, "
                             "an optional system turn first)", field="instruct-files")
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / PT_FILE, [{"text": doc.text} for doc in documents])
    write_jsonl(out / SFT_FILE, [{"conversations": dialogue} for dialogue in kept])
    write_json(out / "dataset_info.json", dataset_info())
    write_yaml(out / STAGE1_YAML, stage1_config(args, out), PT_NOTE)
    write_yaml(out / STAGE2_YAML, stage2_config(args, out, len(kept)), SFT_NOTE)
    return {"documents": len(documents), "dialogues": len(kept), "skipped": skipped}


def check_outputs(out: Path, overwrite: bool) -> None:
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise UserInputError(f"already holds {', '.join(existing)}; pass --overwrite to replace them",
                             path=str(out))


def sharegpt_dialogues(dialogues: Sequence[list[dict[str, str]]]) -> tuple[list[list[dict]], dict[str, int]]:
    """Dialogues LLaMA-Factory's sharegpt converter accepts, and why the others were left out (counted,
    never dropped silently): after an optional leading system turn, user and assistant alternate, user
    first, assistant last. Our reader also allows e.g. two user turns in a row; LLaMA-Factory drops those."""
    kept: list[list[dict]] = []
    skipped: dict[str, int] = {}
    for dialogue in dialogues:
        reason = sharegpt_problem(dialogue)
        if reason is None:
            kept.append([{"role": m["role"], "content": m["content"]} for m in dialogue])
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    return kept, skipped


def sharegpt_problem(dialogue: Sequence[dict[str, str]]) -> str | None:
    turns = list(dialogue[1:] if dialogue and dialogue[0]["role"] == "system" else dialogue)
    if any(m["role"] == "system" for m in turns):
        return "a system turn after the first turn"
    expected = ["user", "assistant"] * (len(turns) // 2)
    if len(turns) % 2 or [m["role"] for m in turns] != expected:
        return "user and assistant turns do not alternate (user first, assistant last)"
    return None


def dataset_info() -> dict[str, Any]:
    return {
        PT_DATASET: {"file_name": PT_FILE, "columns": {"prompt": "text"}},
        SFT_DATASET: {"file_name": SFT_FILE, "formatting": "sharegpt",
                      "columns": {"messages": "conversations"}, "tags": dict(SHAREGPT_TAGS)},
    }


def stage_dir(out: Path, stage: int) -> Path:
    return out / "saves" / ("stage1_pt" if stage == 1 else "stage2_sft")


@dataclass(frozen=True)
class Recipe:
    """What one of our LightningCLI configs trains with, in the terms LLaMA-Factory needs."""

    lora_r: int
    lora_alpha: int
    lora_dropout: float
    learning_rate: float
    warmup_steps: int
    batch_size: int
    accumulation: int
    epochs: int

    @classmethod
    def from_config(cls, path: Path) -> Recipe:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        model, data, trainer = config["model"]["init_args"], config["data"]["init_args"], config["trainer"]
        return cls(model["lora_r"], model["lora_alpha"], model["lora_dropout"], model["learning_rate"],
                   model["warmup_steps"], data["batch_size"], trainer.get("accumulate_grad_batches", 1),
                   trainer["max_epochs"])


def common_train_settings(output_dir: Path, recipe: Recipe, warmup_steps: int) -> dict[str, Any]:
    """Output and optimisation settings of one stage, as our config for it sets them.

    warmup_steps, not warmup_ratio: transformers 5 removed warmup_ratio from TrainingArguments, and older
    versions take an integer warmup_steps too (overwrite_output_dir went the same way, so it is not written).
    """
    return {"output_dir": str(output_dir), "logging_steps": 10, "save_steps": 500, "plot_loss": True,
            "report_to": "none", "per_device_train_batch_size": recipe.batch_size,
            "gradient_accumulation_steps": recipe.accumulation, "learning_rate": recipe.learning_rate,
            "num_train_epochs": float(recipe.epochs), "lr_scheduler_type": "cosine", "warmup_steps": warmup_steps,
            "bf16": True, "max_grad_norm": 1.0, "val_size": VAL_SIZE,
            "per_device_eval_batch_size": recipe.batch_size, "eval_strategy": "steps", "eval_steps": 500}


def lora_settings(recipe: Recipe) -> dict[str, Any]:
    return {"lora_rank": recipe.lora_r, "lora_alpha": recipe.lora_alpha, "lora_dropout": recipe.lora_dropout,
            "lora_target": "all"}


def sft_warmup_steps(dialogues: int, recipe: Recipe) -> int:
    """Our stage-2 warmup, capped at half the optimizer steps (one GPU) as our trainer caps it: on a small
    data set a longer warmup would end training before the learning rate reaches its peak. Stage 1 has no
    such cap: LLaMA-Factory packs documents into blocks, so its step count is unknown before tokenising."""
    train_examples = dialogues - math.ceil(dialogues * VAL_SIZE)
    steps = math.ceil(train_examples / (recipe.batch_size * recipe.accumulation)) * recipe.epochs
    return min(recipe.warmup_steps, steps // 2)


def stage1_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    recipe = Recipe.from_config(STAGE1_CONFIG)
    config: dict[str, Any] = {
        "model_name_or_path": args.model,
        "stage": "pt", "do_train": True, "finetuning_type": "lora", **lora_settings(recipe),
        "dataset_dir": str(out), "dataset": PT_DATASET, "template": "default",
        "cutoff_len": args.pt_cutoff_len, "preprocessing_num_workers": 4,
    }
    if args.stage1_quantization == "4bit":  # nf4 with double quantisation, like our QLoRA config
        config.update({"quantization_bit": 4, "quantization_type": "nf4", "double_quantization": True})
    return config | common_train_settings(stage_dir(out, 1), recipe, recipe.warmup_steps)


def stage2_config(args: argparse.Namespace, out: Path, dialogues: int) -> dict[str, Any]:
    recipe = Recipe.from_config(STAGE2_CONFIG)
    return {
        "model_name_or_path": args.model,
        "adapter_name_or_path": str(stage_dir(out, 1)),
        "create_new_adapter": True,  # merge the style adapter, train a new instruct adapter on top
        "stage": "sft", "do_train": True, "finetuning_type": "lora", **lora_settings(recipe),
        "dataset_dir": str(out), "dataset": SFT_DATASET, "template": "qwen",
        "cutoff_len": args.sft_cutoff_len, "preprocessing_num_workers": 4,
    } | common_train_settings(stage_dir(out, 2), recipe, sft_warmup_steps(dialogues, recipe))


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(strict_json(row) + "\n")


def write_json(path: Path, data: dict) -> None:
    path.write_text(strict_json(data, indent=2) + "\n", encoding="utf-8")


def write_yaml(path: Path, config: dict, note: str) -> None:
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    path.write_text(HEADER.format(note=note) + body, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
