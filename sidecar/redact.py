"""Secret values and the redaction of secrets from text shown to people."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "******"

# The userinfo part of a URL: scheme://user:password@host. Only the password is masked.
# The password part runs to the last `@` before the path, so an unencoded `@` in a password
# is masked too.
# The scheme is bounded (RFC 3986 sets no limit, real ones are short): unbounded, each start
# inside a long run of letters rescans the run, which takes time quadratic in its length.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]{0,63}://[^/@:\s]*):[^/\s]*@")


class Secret:
    """A credential whose repr and str never show the value.

    Call `reveal()` at the one place that hands the value to a driver.
    """

    __slots__ = ("_value", "path", "source")

    def __init__(self, value: str, source: str = "", path: str | None = None) -> None:
        self._value = value
        # Where the value came from, e.g. "env MYSQL_PASSWORD", safe to show.
        self.source = source
        # The file it was read from, watched for rotation; None for other sources.
        self.path = path

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def redact_url(url: str) -> str:
    """Mask the password in every `scheme://user:password@` part of the text."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{MASK}@", url)


def redact(text: str, secrets: Iterable[Secret | None] = ()) -> str:
    """Mask URL passwords and every given secret value in the text."""
    text = redact_url(text)
    for secret in secrets:
        if secret is None:
            continue
        value = secret.reveal()
        # NOTE: a one-character secret would mask unrelated characters, so values shorter
        # than 3 characters are left alone; such a password protects nothing anyway.
        if len(value) >= 3:
            text = text.replace(value, MASK)
    return text
