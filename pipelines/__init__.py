"""The project's multi-step workflows. Each composes dfk's library into a short list of steps."""
