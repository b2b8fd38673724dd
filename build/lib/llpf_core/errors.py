"""The one exception for mistakes a user can make and fix (exit code 2 on the CLI)."""


class UserError(Exception):
    """A problem with the user's input, reported as one line with the fix; never a traceback."""
