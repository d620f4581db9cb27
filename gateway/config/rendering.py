"""Rendering for `gateway check-config`: the effective configuration as TOML that loads back to
the same Config, each key that is not a default with where it came from, and secrets masked.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from gateway.config.loading import Config, Sources

SECRET_MASK = "***"


def masked(value: str) -> str:
    """A secret as check-config shows it: a URL keeps its scheme, user, host and path, but not its
    password; anything else non-empty is the mask."""
    if not value:
        return value
    scheme, sep, rest = value.partition("://")
    if not sep:
        return SECRET_MASK
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return value
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:{SECRET_MASK}" if colon else SECRET_MASK
    return f"{scheme}://{shown}@{hosts}{slash}{tail}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def render_toml(config: Config, sources: Sources | None = None) -> str:
    """The effective configuration as a TOML file that loads back to the same Config, secrets
    masked (so it loads back only when no secret is set); a key that is not a default says where
    it came from in a comment."""
    sources = sources or {}

    def origin(section: str, key: str) -> str:
        return f"  # from {sources[(section, key)]}" if (section, key) in sources else ""

    blocks: list[str] = []
    for section in dataclasses.fields(Config):
        values = getattr(config, section.name)
        lines, tables = [f"[{section.name}]"], []
        for fdef in dataclasses.fields(values):
            value = getattr(values, fdef.name)
            if fdef.metadata.get("secret") and isinstance(value, str):
                value = masked(value)
            if isinstance(value, dict):
                # A table must follow its section's plain keys.
                rows = [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()]
                tables.append("\n".join([f"[{section.name}.{fdef.name}]{origin(section.name, fdef.name)}", *rows]))
            else:
                lines.append(f"{fdef.name} = {_toml_value(value)}{origin(section.name, fdef.name)}")
        blocks.append("\n\n".join(["\n".join(lines), *tables]))
    return "\n\n".join(blocks) + "\n"
