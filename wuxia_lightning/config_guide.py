"""docs/CONFIG_GUIDE.md, generated from the real schema: the ``__init__`` signatures (what LightningCLI
builds the YAML schema from) and their docstrings' ``Args:`` sections.

``python scripts/make_config_guide.py`` rewrites the guide; ``tests/test_config_guide.py`` fails when the
file and the schema drift apart, or when a key has no description.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass

# (YAML section, class): the four classes a user configures.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("model", "wuxia_lightning.modules.style.StyleAlignmentModule"),
    ("data", "wuxia_lightning.data.style_datamodule.StyleDataModule"),
    ("model", "wuxia_lightning.modules.instruct.InstructModule"),
    ("data", "wuxia_lightning.data.instruct_datamodule.InstructDataModule"),
)

# Keys by what a user is trying to fix; each is also in the full reference below. Trainer keys are
# Lightning's own (documented there) and named for completeness.
TASKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Style too weak (or too strong)",
     "Stage 1 moves the model towards the corpus; β pulls it back towards the base.",
     ("model.kl_beta", "model.lora_r", "model.lora_alpha", "model.learning_rate", "data.span_prob",
      "data.function_word_prob", "data.none_prob", "data.mask_rate", "model.replay_beta", "model.style_scale",
      "model.instruct_scale")),
    ("Forgets general language",
     "Watch the general-text perplexity (`val_general/ppl`) and raise β; in stage 2 replay style windows.",
     ("data.general_corpus", "model.kl_beta", "model.replay_beta", "data.replay_corpus", "model.adapter_mode")),
    ("Out of memory",
     "Smaller batches with `trainer.accumulate_grad_batches` keep the effective batch.",
     ("model.quantization", "model.dtype", "model.gradient_checkpointing", "model.loss_chunk_size",
      "data.batch_size", "data.max_length", "data.replay_batch_size", "data.replay_max_length",
      "model.lora_r")),
    ("Never stops, or writes the user's next turn",
     "Stage 2 learns to end replies with <|im_end|>; the preset must be the one used in training.",
     ("data.preset", "data.presets_file", "model.max_new_tokens", "model.adapter_mode", "model.eval_samples")),
    ("Corpus files",
     "Encodings are detected per file; what was converted and dropped is reported at every fit.",
     ("data.corpus", "data.to_simplified", "data.drop_modern", "data.val_fraction", "data.cache_dir",
      "data.train_files", "data.val_files", "data.prompts")),
)


@dataclass(frozen=True)
class Key:
    section: str
    owner: str          # class name
    name: str
    type: str
    default: str
    description: str


def documented_args(cls: type) -> dict[str, str]:
    """``Args:`` entries of a class docstring; ``a / b / c: text`` documents each of a, b and c."""
    doc = inspect.getdoc(cls) or ""
    body = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    entries: dict[str, str] = {}
    names: list[str] = []
    for line in body.splitlines():
        match = re.match(r"^    ([\w /]+?):\s+(.*)$", line)
        if match:
            names = [name.strip() for name in match.group(1).split("/")]
            for name in names:
                entries[name] = match.group(2).strip()
        elif line.startswith("        ") and names:
            for name in names:
                entries[name] += " " + line.strip()
        elif line.strip():
            names = []
    return entries


def schema_keys() -> list[Key]:
    keys = []
    for section, path in SECTIONS:
        cls = _import(path)
        docs = documented_args(cls)
        hints = typing.get_type_hints(cls.__init__)
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name == "self":
                continue
            keys.append(Key(section, cls.__name__, name, _type_name(hints.get(name)), repr(parameter.default),
                            docs.get(name, "")))
    return keys


def render() -> str:
    keys = schema_keys()
    lines = ["# Configuration guide", "",
             "Every key of both stages and both DataModules: its type, default and what it does. Generated from",
             "the classes' `__init__` signatures and docstrings by `python scripts/make_config_guide.py`; a test",
             "fails when this file and the code drift apart. Set a key in a YAML file under its section",
             "(`model:` / `data:` → `init_args:`) or on the command line (`--model.kl_beta 1.0`).", ""]
    lines += _task_sections(keys)
    for section, path in SECTIONS:
        name = path.rsplit(".", 1)[1]
        lines += [f"## `{section}`: {name} (`{path}`)", "", "| key | type | default | what it does |",
                  "|---|---|---|---|"]
        lines += [f"| `{section}.{k.name}` | {_cell(k.type)} | `{k.default}` | {_cell(k.description)} |"
                  for k in keys if k.owner == name]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _task_sections(keys: list[Key]) -> list[str]:
    known = {f"{k.section}.{k.name}": k for k in keys}
    lines = ["## By task", ""]
    for title, advice, names in TASKS:
        lines += [f"### {title}", "", advice, ""]
        for name in names:
            if name not in known:
                raise KeyError(f"the config guide's task list names {name}, which no class declares")
            for key in (k for k in keys if f"{k.section}.{k.name}" == name):
                lines.append(f"- `{name}` ({key.owner}, default `{key.default}`): {key.description}")
        lines.append("")
    return lines


def _type_name(hint: object) -> str:
    text = str(hint).replace("typing.", "") if hint is not None else "?"
    return re.sub(r"<class '([\w.]+)'>", r"\1", text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _import(path: str) -> type:
    module, name = path.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)
