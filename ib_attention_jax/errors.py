"""Errors a user can fix: the command line prints their message, without a traceback, and exits non-zero.

Each message names the problem and the way out; a traceback would only bury it. Errors
that are bugs (anything else) keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a state of the work directory that the user must resolve; the message says how."""


class ConfigError(UserError, ValueError):
    """A config key that does not exist, or a value that cannot work (named with the fix)."""
