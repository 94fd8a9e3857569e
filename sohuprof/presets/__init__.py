"""Hardware (TOML) and model (HuggingFace config.json) presets shipped with sohuprof, and the one
rule for reading either: a known preset name, or a path to the user's own file."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from sohuprof.errors import SpecError

__all__ = ["preset_names", "read_preset"]


def preset_names(kind: str, suffix: str) -> list[str]:
    """Names of the presets in ``presets/<kind>/*<suffix>``."""
    folder = resources.files("sohuprof.presets") / kind
    return sorted(p.name.removesuffix(suffix) for p in folder.iterdir() if p.name.endswith(suffix))


def read_preset(kind: str, suffix: str, name_or_path: str | Path, *, what: str, hint: str) -> tuple[Path, bytes]:
    """Bytes of preset ``name_or_path`` or of the user's file at that path, and where they came from.

    A name ending in ``suffix``, or naming an existing path, is a file; anything else a preset.
    """
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(suffix) or path.exists():
        if not path.is_file():
            raise SpecError(f"{what} file {text!r} not found")
        return path, path.read_bytes()
    names = preset_names(kind, suffix)
    if text not in names:
        close = difflib.get_close_matches(text, names, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise SpecError(f"unknown {what} preset {text!r}: {guess}choose one of {', '.join(names)} or {hint}")
    return Path(text + suffix), (resources.files("sohuprof.presets") / kind / f"{text}{suffix}").read_bytes()
