"""Errors the CLI and the pipeline show to users as one clear message, never a traceback."""


class EmbenchError(Exception):
    """A failure caused by input or environment, explained in its message."""


class ConfigError(EmbenchError):
    """A configuration file that cannot be used: names the file, the key path and the problem."""


class ParityError(EmbenchError):
    """A prepared model variant whose embeddings miss its parity gate."""
