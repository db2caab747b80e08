"""Errors the CLI and the pipeline show to users as one clear message, never a traceback."""

from __future__ import annotations

from pydantic import ValidationError


class EmbenchError(Exception):
    """A failure caused by input or environment, explained in its message."""


class ConfigError(EmbenchError):
    """A configuration file that cannot be used: names the file, the key path and the problem."""


class ParityError(EmbenchError):
    """A prepared model variant whose embeddings miss its parity gate."""


def params_error(what: str, exc: ValidationError) -> ConfigError:
    """The first problem pydantic found in a DAG's params, naming the field: "WHAT: field: msg"."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return ConfigError(f"{what}: {where}: {first['msg']}")
