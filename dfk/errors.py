"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""

import os
import ssl


class UserError(Exception):
    """A problem with the user's input (path, layout, parameter, image), with the fix in the text."""

    exit_code = 2


def server_refusal(exc: BaseException) -> str | None:
    """One line for a tracking server's refusal (HTTP 401: no or wrong credentials; 403: the user
    lacks the permission) or for one that stopped answering, or None for any other error."""
    status = getattr(exc, "get_http_status_code", lambda: None)()
    if status == 401:
        return ("the tracking server refused the credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to a user of that server")
    if status == 403:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "this user")
        return f"the tracking server says {user} may not do that (HTTP 403): ask its admin for the permission"
    message = str(exc)
    if type(exc).__name__ == "MlflowException" and "Max retries exceeded" in message:
        url = message.split("API request to ", 1)[-1].split(" failed", 1)[0]
        return f"the tracking server stopped answering ({url}); the runs it holds are as it last saved them"
    return None


def unreachable_server(uri: str, timeout: float = 10) -> str | None:
    """Why the tracking server at an ``http(s)://`` ``uri`` cannot be reached, or None when it answers
    (any HTTP status: credentials are checked later, per request). MLflow itself retries a refused
    connection for minutes, which is right for a blip mid-run and wrong for a mistyped URI."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):  # it answers; MLflow checks the certificate its own way
            return None
        return f"cannot reach the tracking server {uri}: {reason} (check MLFLOW_TRACKING_URI or --tracking-uri)"
    return None
