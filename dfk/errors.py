"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""


class UserError(Exception):
    """A problem with the user's input (path, layout, parameter, image), with the fix in the text."""

    exit_code = 2
