"""System-prompt presets (``elegant_style`` 雅致文学风格, ``wuxia``, ``plain``, ...) kept in a YAML file.

The packaged file is ``wuxia_lightning/resources/presets.yaml``. A user file of the same shape
(``name: prompt`` or ``name: {description: ..., system: prompt}``) adds presets or overrides packaged ones.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import yaml

from wuxia_lightning.errors import UserInputError

PACKAGED_PRESETS = "presets.yaml"


def _parse_presets(data: Any, source: str) -> dict[str, str]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserInputError(f"a presets file must be a mapping of name -> system prompt, got "
                             f"{type(data).__name__}", path=source)
    presets: dict[str, str] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            if "system" not in value:
                raise UserInputError("missing 'system' (the system prompt)", path=source, field=f"{name}.system")
            value = value["system"]
            field = f"{name}.system"
        else:
            field = str(name)
        if not isinstance(value, str):
            raise UserInputError(f"a system prompt must be a string, got {type(value).__name__}",
                                 path=source, field=field)
        presets[str(name)] = value.strip()
    return presets


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise UserInputError(f"invalid YAML: {exc.problem}", path=source, line=line) from None
    except yaml.YAMLError as exc:
        raise UserInputError(f"invalid YAML: {exc}", path=source) from None


def load_presets(path: str | None = None) -> dict[str, str]:
    """Presets from ``path``, or the packaged ones when ``path`` is None: ``{name: system prompt}``."""
    if path is None:
        resource = resources.files("wuxia_lightning.resources").joinpath(PACKAGED_PRESETS)
        return _parse_presets(_load_yaml(resource.read_text(encoding="utf-8"), str(resource)), str(resource))
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise UserInputError("presets file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read presets file: {exc}", path=path) from None
    return _parse_presets(_load_yaml(text, path), path)


def available_presets(presets_file: str | None = None) -> dict[str, str]:
    """Packaged presets, updated with those of ``presets_file`` (which win on equal names)."""
    presets = load_presets()
    if presets_file is not None:
        presets.update(load_presets(presets_file))
    return presets


def resolve_system_prompt(preset: str | None, presets_file: str | None = None) -> str | None:
    """System prompt of preset ``preset`` (None -> None). Unknown names raise a UserInputError that
    lists the available ones."""
    if preset is None:
        return None
    presets = available_presets(presets_file)
    if preset not in presets:
        names = ", ".join(sorted(presets))
        where = f" (packaged presets and {presets_file})" if presets_file else ""
        raise UserInputError(f"unknown system-prompt preset {preset!r}; available{where}: {names}",
                             field="preset")
    return presets[preset]
