"""The one exception type users see: a message that names the problem and the fix."""

import difflib


class T5kitError(Exception):
    """A problem with the user's input, files or settings (not a bug in t5kit).

    The CLI prints ``str(error)`` as one line and exits 1; the server answers it as a 4xx JSON error.
    """


class ConfigError(T5kitError, ValueError):
    """A configuration value or key that t5kit cannot accept."""


class CheckpointError(T5kitError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


class TokenizerError(T5kitError, ValueError):
    """A tokenizer file or a tokenizer input that cannot be used."""


class DataError(T5kitError, ValueError):
    """A data file, record or task definition that cannot be used."""


def closest_names(name: str, candidates, n: int = 3) -> str:
    """A ' Did you mean ...?' suffix naming the candidates closest to ``name`` (empty if none are close)."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
