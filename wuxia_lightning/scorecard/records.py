"""Generations to score: ``predictions.jsonl`` from ``wuxia predict`` or any JSONL with prompt and reply.

Every problem is found before anything is fitted or written, and named by file, line and field: a
scorecard built on half a file, or on a misspelt author, would look like a finding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.metrics.authorship import resolve_author

# Replies per variant below which shares, distinct-2 and Delta of the pooled replies mean little.
MIN_REPLIES = 5
REPLY_FIELDS = ("reply", "generation")  # ours is "reply"; wuxia predict writes "generation"


@dataclass(frozen=True)
class Generation:
    prompt: str
    reply: str
    variant: str
    target_author: str | None = None  # a class id of the authorship model
    stopped: bool | None = None       # known only for predictions.jsonl (the end-of-turn token was seen)
    line: int | None = None


def parse_record(record: object, classes: Sequence[str], default_variant: str, path: str | None = None,
                 line: int | None = None) -> Generation:
    """One record (a JSON object or a dict built in code) → :class:`Generation`, or a UserInputError."""
    def fail(message: str, field: str | None = None) -> UserInputError:
        return UserInputError(message, path=path, line=line, field=field)

    if not isinstance(record, Mapping):
        raise fail(f"expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("prompt"), str):
        raise fail("missing or not a string", "prompt")
    reply_field = next((f for f in REPLY_FIELDS if f in record), None)
    if reply_field is None or not isinstance(record[reply_field], str):
        raise fail("missing or not a string (or 'generation', as wuxia predict writes it)", "reply")
    variant = record.get("variant", default_variant)
    if not isinstance(variant, str) or not variant:
        raise fail("not a non-empty string", "variant")
    target = record.get("target_author")
    if target is not None:
        resolved = resolve_author(target, classes) if isinstance(target, str) else None
        if resolved is None:
            raise fail(f"unknown author {target!r} (known: {', '.join(classes)})", "target_author")
        target = resolved
    stopped = record.get("stopped")
    if stopped is not None and not isinstance(stopped, bool):
        raise fail("not true or false", "stopped")
    return Generation(record["prompt"], record[reply_field], variant, target, stopped, line)


def read_generations(path: str | Path, classes: Sequence[str], min_replies: int = MIN_REPLIES) -> list[Generation]:
    """Every record of a JSONL file, checked; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError("no such file", path=str(path))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise UserInputError(f"not UTF-8 ({error.reason} at byte {error.start})", path=str(path)) from error
    default_variant = path.parent.name if path.name == "predictions.jsonl" else path.stem
    records = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserInputError(f"not valid JSON ({error.msg})", path=str(path), line=number) from error
        records.append(parse_record(record, classes, default_variant, str(path), number))
    if not records:
        raise UserInputError("empty: no generations (one JSON object per line)", path=str(path))
    check_counts(records, min_replies, str(path))
    return records


def check_counts(records: Sequence[Generation], min_replies: int, path: str | None = None) -> None:
    """Each variant needs ``min_replies`` replies; the error points at the variant's first line."""
    for variant, group in by_variant(records).items():
        if len(group) < min_replies:
            raise UserInputError(f"variant '{variant}' has {len(group)} replies; the statistics need at least "
                                 f"{min_replies} per variant", path=path, line=group[0].line)


def by_variant(records: Sequence[Generation]) -> dict[str, list[Generation]]:
    """Records grouped by variant, in order of first appearance."""
    groups: dict[str, list[Generation]] = {}
    for record in records:
        groups.setdefault(record.variant, []).append(record)
    return groups
