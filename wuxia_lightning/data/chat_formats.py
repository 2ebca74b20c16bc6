"""Instruction data: read dialogues from JSON / JSONL files in one of four formats, detected per file.

Formats (detected from each file's first record; every other record of the file must match):

* ``conversations`` -- ``{"conversations": [{"role": ..., "content": ...}, ...]}``
* ``sharegpt``      -- ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}``
* ``messages``      -- OpenAI style ``{"messages": [{"role": ..., "content": ...}, ...]}``
* ``alpaca``        -- ``{"instruction": ..., "input": ..., "output": ...[, "system": ...][, "history": [[q, a], ...]]}``

All formats also accept an optional top-level ``"system"`` string. Every record becomes a list of
``{"role": "system"|"user"|"assistant", "content": str}`` messages. A record that cannot be read raises
:class:`~wuxia_lightning.errors.UserInputError` naming the file, the line (for a JSON array: the element
index, said so in the message) and the field. Records are never dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.sources import PathArg, resolve_paths

Message = dict[str, str]

FORMATS = ("conversations", "sharegpt", "messages", "alpaca")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "system": "system",
}
DATA_SUFFIXES = (".jsonl", ".json")


@dataclass
class ChatFileReport:
    """What was read from one file."""

    path: str
    format: str
    examples: int


class _RecordError(Exception):
    """Internal: a problem in one record; turned into a UserInputError with file and line."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


# ----------------------------------------------------------------------------------------- paths
def resolve_data_files(paths: PathArg) -> list[Path]:
    """The ``*.jsonl`` / ``*.json`` files: files, folders (recursive), globs (see :func:`resolve_paths`)."""
    return resolve_paths(paths, DATA_SUFFIXES, "instruction data file or folder")


# ----------------------------------------------------------------------------------------- reading
def _read_records(path: str) -> tuple[list[tuple[int, Any]], bool]:
    """Return ``[(position, record)]`` and whether the file is a JSON array (position = element index)
    or JSONL (position = 1-based line number; blank lines skipped)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise UserInputError(f"not valid UTF-8 text ({exc.reason} at byte {exc.start})", path=path) from exc
    except OSError as exc:
        raise UserInputError(f"cannot read file: {exc.strerror or exc}", path=path) from exc

    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except RecursionError:
            raise UserInputError("JSON nested too deeply to read", path=path) from None
        except json.JSONDecodeError as exc:
            raise UserInputError(f"invalid JSON array: {exc.msg} (column {exc.colno})",
                                 path=path, line=exc.lineno) from exc
        return list(enumerate(data)), True

    records: list[tuple[int, Any]] = []
    # Split at "\n" only: str.splitlines() also breaks at U+0085 / U+2028 / U+2029, which json.dumps(...,
    # ensure_ascii=False) writes raw inside strings. A trailing "\r" (CRLF files) is whitespace to json.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except RecursionError:
            raise UserInputError("JSON nested too deeply to read", path=path, line=number) from None
        except json.JSONDecodeError as exc:
            hint = ""
            if number == 1 and path.lower().endswith(".json"):
                hint = " (a .json file must hold one JSON array of records, or one JSON object per line)"
            raise UserInputError(f"invalid JSON: {exc.msg} (column {exc.colno}){hint}",
                                 path=path, line=number) from exc
    return records, False


# ----------------------------------------------------------------------------------------- detection
def _guess_format(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        turns = record["conversations"]
        first = turns[0] if isinstance(turns, list) and turns else None
        if isinstance(first, dict) and ("from" in first or "value" in first):
            return "sharegpt"
        return "conversations"
    if "instruction" in record or "output" in record:
        return "alpaca"
    return None


def _unknown_format_message(record: Any) -> str:
    if not isinstance(record, dict):
        return f"each record must be a JSON object, got {type(record).__name__}"
    keys = ", ".join(sorted(map(str, record))) or "none"
    return (f"unrecognised record (keys: {keys}); expected 'conversations', 'messages' or "
            "alpaca 'instruction'/'input'/'output'")


def detect_format(record: dict, path: str, line: int) -> str:
    """Format of one record: ``conversations``, ``sharegpt``, ``messages`` or ``alpaca``."""
    fmt = _guess_format(record)
    if fmt is None:
        raise UserInputError(_unknown_format_message(record), path=path, line=line)
    return fmt


# ----------------------------------------------------------------------------------------- parsing
def _string(value: Any, field: str, *, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        got = "null" if value is None else f"a {type(value).__name__}"
        raise _RecordError(f"must be a string, got {got}", field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate escape such as \ud83d: half of a cut emoji
        raise _RecordError(f"holds an unpaired surrogate {value[error.start]!r} at character {error.start} "
                           "(half of an emoji cut in two?); fix or drop that text", field) from None
    return value


def _turns(record: dict, key: str, role_key: str, content_key: str, role_map: dict[str, str] | None
           ) -> list[Message]:
    if key not in record:
        raise _RecordError(f"missing field '{key}'", key)
    turns = record[key]
    if not isinstance(turns, list):
        raise _RecordError(f"must be a list of turns, got {type(turns).__name__}", key)
    if not turns:
        raise _RecordError("empty dialogue", key)
    messages: list[Message] = []
    for index, turn in enumerate(turns):
        where = f"{key}[{index}]"
        if not isinstance(turn, dict):
            raise _RecordError(f"each turn must be an object, got {type(turn).__name__}", where)
        if role_key not in turn:
            raise _RecordError(f"missing field '{role_key}'", f"{where}.{role_key}")
        if content_key not in turn:
            raise _RecordError(f"missing field '{content_key}'", f"{where}.{content_key}")
        raw_role = turn[role_key]
        if not isinstance(raw_role, str):
            raise _RecordError(f"must be a string, got {type(raw_role).__name__}", f"{where}.{role_key}")
        if role_map is None:
            role = raw_role if raw_role in ROLES else None
            allowed = ", ".join(ROLES)
        else:
            role = role_map.get(raw_role.strip().lower())
            allowed = ", ".join(role_map)
        if role is None:
            raise _RecordError(f"unknown role {raw_role!r} (allowed: {allowed})", f"{where}.{role_key}")
        content = _string(turn[content_key], f"{where}.{content_key}")
        messages.append({"role": role, "content": content, "_field": f"{where}.{content_key}",
                         "_role_field": f"{where}.{role_key}"})
    return messages


def _alpaca(record: dict) -> list[Message]:
    for key in ("instruction", "output"):
        if key not in record:
            raise _RecordError(f"missing field '{key}'", key)
    instruction = _string(record["instruction"], "instruction")
    extra = _string(record.get("input"), "input", optional=True)
    output = _string(record["output"], "output")
    user = f"{instruction}\n\n{extra}" if instruction.strip() and extra.strip() else (
        instruction if instruction.strip() else extra)
    if not user.strip():
        raise _RecordError("empty instruction (and input)", "instruction")
    messages: list[Message] = []
    history = record.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise _RecordError(f"must be a list of [instruction, response] pairs, got "
                               f"{type(history).__name__}", "history")
        for index, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise _RecordError("must be an [instruction, response] pair", f"history[{index}]")
            question = _string(pair[0], f"history[{index}][0]")
            answer = _string(pair[1], f"history[{index}][1]")
            messages.append({"role": "user", "content": question, "_field": f"history[{index}][0]"})
            messages.append({"role": "assistant", "content": answer, "_field": f"history[{index}][1]"})
    messages.append({"role": "user", "content": user, "_field": "instruction"})
    messages.append({"role": "assistant", "content": output, "_field": "output"})
    return messages


_TOP_KEY = {"conversations": "conversations", "sharegpt": "conversations", "messages": "messages"}


def _parse(record: Any, fmt: str, default_system: str | None) -> list[Message]:
    if not isinstance(record, dict):
        raise _RecordError(f"each record must be a JSON object, got {type(record).__name__}")
    if fmt == "alpaca":
        messages = _alpaca(record)
    elif fmt == "sharegpt":
        messages = _turns(record, "conversations", "from", "value", SHAREGPT_ROLES)
    else:
        messages = _turns(record, _TOP_KEY[fmt], "role", "content", None)

    system = record.get("system")
    if system is not None:
        system = _string(system, "system")
        if any(m["role"] == "system" for m in messages):
            raise _RecordError("record has both a top-level 'system' and a system turn", "system")
        if system.strip():
            messages.insert(0, {"role": "system", "content": system, "_field": "system"})

    dialogue_key = "conversations" if fmt in ("conversations", "sharegpt") else fmt
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        raise _RecordError("dialogue has no assistant turn", dialogue_key if fmt != "alpaca" else "output")
    for message in assistants:
        if not message["content"].strip():
            raise _RecordError("empty assistant reply", message["_field"])
    if messages[-1]["role"] != "assistant":
        raise _RecordError("dialogue must end with an assistant reply",
                           messages[-1].get("_role_field", messages[-1]["_field"]))
    first = next(m for m in messages if m["role"] != "system")
    if first["role"] != "user":
        raise _RecordError("the first non-system turn must be a user turn",
                           first.get("_role_field", first["_field"]))

    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    if default_system is not None and not any(m["role"] == "system" for m in clean):
        clean.insert(0, {"role": "system", "content": default_system})
    return clean


def load_chat_file(path: str, default_system: str | None = None) -> tuple[list[list[Message]], ChatFileReport]:
    """Read one JSON / JSONL file; see the module docstring."""
    records, is_array = _read_records(path)
    if not records:
        raise UserInputError("file holds no records", path=path)

    def where(position: int) -> str:
        return (f" (position {position} is the element index in the JSON array, counting from 0)"
                if is_array else "")

    first_position, first_record = records[0]
    fmt = _guess_format(first_record)
    if fmt is None:
        raise UserInputError(_unknown_format_message(first_record) + where(first_position), path=path,
                             line=first_position)

    dialogues: list[list[Message]] = []
    for position, record in records:
        try:
            dialogues.append(_parse(record, fmt, default_system))
        except _RecordError as exc:
            message = exc.message
            other = _guess_format(record)
            if other is not None and other != fmt:
                message += (f"; this record looks like format '{other}' but the file was detected as "
                            f"'{fmt}' from its first record (one format per file)")
            raise UserInputError(message + where(position), path=path, line=position,
                                 field=exc.field) from None
    return dialogues, ChatFileReport(path=path, format=fmt, examples=len(dialogues))


def load_conversations(paths: str | Sequence[str], default_system: str | None = None
                       ) -> tuple[list[list[Message]], list[ChatFileReport]]:
    """Read every file of ``paths`` (file, folder, glob or a list); return the dialogues and one report
    per file. ``default_system`` is prepended as a system turn to dialogues that have none."""
    dialogues: list[list[Message]] = []
    reports: list[ChatFileReport] = []
    for path in resolve_data_files(paths):
        file_dialogues, report = load_chat_file(str(path), default_system)
        dialogues.extend(file_dialogues)
        reports.append(report)
    return dialogues, reports


def format_reports(reports: Sequence[ChatFileReport]) -> str:
    """One line per file, for logs: ``path: N dialogues (format)``."""
    return "\n".join(f"{r.path}: {r.examples} dialogues ({r.format})" for r in reports)
