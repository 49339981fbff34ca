"""Config dataclasses: one validated object per stage, filled by a panel or by papermill.

Style follows TRL/PEFT: every field has a default and a help text, `__post_init__`
validates, and `to_dict()` / `save()` / `load()` round-trip exactly (sorted JSON).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nbkit.core.errors import ConfigError
from nbkit.core.files import write_text

FIX_HINT = "set it in the parameters cell or the panel (or with `nbkit run -p NAME VALUE`)"


def field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text, TRL style."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


@dataclasses.dataclass
class Config:
    """Base of the config dataclasses (no fields of its own): validation helpers, dict/JSON round-trip, help texts."""

    def __post_init__(self) -> None:
        self._coerce_types()
        self.validate()

    # -- validation -------------------------------------------------------------------
    def validate(self) -> None:
        """Subclasses check their fields here and raise ConfigError."""

    def _coerce_types(self) -> None:
        """papermill and the CLI pass strings and ints; turn them into the declared types."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            hint = hints.get(f.name)
            if value is None:
                continue
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
            elif hint is int and isinstance(value, float):
                if not value.is_integer():
                    raise ConfigError(f"`{f.name}` must be a whole number, got {value!r} — {FIX_HINT}.")
                setattr(self, f.name, int(value))
            elif hint is bool and not isinstance(value, bool):
                raise ConfigError(f"`{f.name}` must be True or False, got {value!r} — {FIX_HINT}.")
            elif hint in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"`{f.name}` must be a number, got {value!r} — {FIX_HINT}.")
            elif hint is str and not isinstance(value, str):
                setattr(self, f.name, str(value))

    @staticmethod
    def require(condition: bool, name: str, problem: str, fix: str = FIX_HINT) -> None:
        if not condition:
            raise ConfigError(f"`{name}` {problem} — {fix}.")

    def require_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        self.require(value in choices, name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")

    # -- round trip -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, strict: bool = True):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown and strict:
            raise ConfigError(
                f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(f'`{u}`' for u in unknown)} "
                f"for {cls.__name__} — known: {', '.join(sorted(names))}."
            )
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_parameters(cls, namespace: Mapping[str, Any]):
        """The config from a notebook's parameters cell, every field by its name: `Config.from_parameters(globals())`.

        The one rule for notebooks: the parameters cell declares every field of its stage's config (a test
        compares the two), so `nbkit run -p NAME VALUE` and papermill can set anything the panel can.
        """
        return cls(**{f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.name in namespace})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> Path:
        # Written aside and renamed (write_text): another process (accelerate launch) may be reading the file.
        return write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def replace(self, **changes: Any):
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
