"""What is never shown: values under secret-looking names, replaced before anything is recorded."""

from __future__ import annotations

import re

__all__ = ["REDACTED", "SECRET_KEY_NAME", "redact_parameters"]


#: Parameter / setting names whose values are never shown.
SECRET_KEY_NAME = re.compile(r"(?i)(pass(word|wd|phrase)?|pwd|token|secret|key|credential|auth|cookie|cert)")


REDACTED = "***redacted***"


def redact_parameters(params: object) -> object:
    """Return a copy of ``params`` with values under secret-looking keys redacted.

    Keys matching :data:`SECRET_KEY_NAME` (password, token, secret, key, ...)
    have their value replaced by ``"***redacted***"`` (unless empty, ``None``
    or a boolean flag), recursively through dicts and lists.  Other values
    are returned unchanged.
    """
    if isinstance(params, dict):
        return {
            k: (
                REDACTED
                if SECRET_KEY_NAME.search(str(k)) and v not in (None, "") and not isinstance(v, bool)
                else redact_parameters(v)
            )
            for k, v in params.items()
        }
    if isinstance(params, (list, tuple)):
        return [redact_parameters(v) for v in params]
    return params
