"""The errors rlkd raises for a user to read: the bottom of the package, importing nothing from rlkd.

1. :class:`RlkdError` is every error that is the user's to fix (a bad file, option, recipe field or
   output path). The command line prints its message on one line, without a traceback, and exits with
   status 2; library callers catch it like any exception. The message names the file and line, the
   option, or the dotted recipe field it is about.
2. :class:`ConfigError`: a recipe or override that cannot be used; the message starts with the dotted
   field name (``training.learning_rate: ...``).
3. :class:`InputError`: an input file or value that cannot be used (a missing file, a bad JSONL line, a
   missing column); the message starts with ``path:line`` where there is one.

The command line's historical name ``rlkd.cli.CliError`` is :class:`RlkdError` itself, so code that
catches ``CliError`` catches all three.

>>> issubclass(ConfigError, RlkdError) and issubclass(InputError, RlkdError)
True
"""

from __future__ import annotations


class RlkdError(Exception):
    """A user-facing error: printed by the command line on one line without a traceback, exit status 2."""


class ConfigError(RlkdError):
    """A recipe or override that cannot be used; the message starts with the dotted field name."""


class InputError(RlkdError):
    """An input (file, record, column or value) that cannot be used; the message names where it is."""
