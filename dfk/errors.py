"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""

import os


class UserError(Exception):
    """A problem with the user's input (path, layout, parameter, image), with the fix in the text."""

    exit_code = 2


def server_refusal(exc: BaseException) -> str | None:
    """One line for a tracking server's refusal (HTTP 401: no or wrong credentials; 403: the user
    lacks the permission), or None for any other error."""
    status = getattr(exc, "get_http_status_code", lambda: None)()
    if status == 401:
        return ("the tracking server refused the credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to a user of that server")
    if status == 403:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "this user")
        return f"the tracking server says {user} may not do that (HTTP 403): ask its admin for the permission"
    return None
