"""The one base of every mistake a user can make with the tools.

A `UserError` says what was given and how to fix it (`data.path=x does not exist; ...`);
every console tool prints it as one line, `prog: error: <message>`, and exits with status 2,
where any other exception is a bug and keeps its traceback. Each part of the package raises its
own subclass (`ConfigError`, `WeightsError`, `PrepError`, ...), so callers can still tell them
apart.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with what the user gave (a key, a value, a file, a checkpoint); the message
    names it and the fix."""
