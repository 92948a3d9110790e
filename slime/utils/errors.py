"""Error types a user can act on, and how the drivers tell them apart from crashes.

A *user error* is a mistake fixable from its message alone: a bad flag value, a missing path, a malformed data
file, a feature that is not supported yet. The drivers print it as one line (`error: <message>`) and exit with
status 2, like argparse; anything else is a crash and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix from the message; raised by our own code with a message naming flag or file."""


class NotSupportedError(UserError):
    """A flag or combination that slime accepts and this project does not implement yet."""

    def __init__(self, what: str, why: str):
        super().__init__(f"not supported yet: {what} ({why})")
        self.what, self.why = what, why

    def __reduce__(self):  # Ray pickles exceptions raised in actors; rebuild from both parts, not the message
        return type(self), (self.what, self.why)


# Besides our own types, these built-in errors carry user-facing messages when our code or a plugin raises them
# (a missing file, a bad value); an empty message means nobody wrote one for a user, so it counts as a crash.
USER_ERROR_TYPES: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, USER_ERROR_TYPES) and bool(str(exc).strip())
