"""Sessions, CSRF tokens and the login rate limit of the parents' page. All in memory: a restart logs parents out."""

from __future__ import annotations

import collections
import hmac
import secrets
import time
from dataclasses import dataclass, field

MAX_SESSIONS = 16  # phones and laptops of one family; the oldest session is dropped past this
LOGIN_WINDOW_S = 60.0
MAX_FAILURES_PER_WINDOW = 9  # the tenth wrong password within a minute is not even checked


@dataclass
class Session:
    token: str  # the cookie's value
    csrf: str  # sent back in the X-CSRF-Token header of every change
    last_used_at: float = field(default_factory=time.monotonic)


class Sessions:
    def __init__(self, lifetime_s: float) -> None:
        self._lifetime_s = lifetime_s
        self._by_token: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def create(self) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        self._by_token[session.token] = session
        while len(self._by_token) > MAX_SESSIONS:
            self._by_token.popitem(last=False)
        return session

    def find(self, token: str | None) -> Session | None:
        """The live session of a cookie's token (its idle time restarts), or None."""
        session = self._by_token.get(token or "")
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_used_at > self._lifetime_s:
            del self._by_token[session.token]
            return None
        session.last_used_at = now
        self._by_token.move_to_end(session.token)
        return session

    def end(self, token: str | None) -> None:
        self._by_token.pop(token or "", None)


def is_csrf_valid(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode())


class LoginLimiter:
    """Wrong passwords over the last minute, for every client together: a guesser on the home network cannot
    spread tries over addresses. While nine are in the window, a login is refused before the password is hashed."""

    def __init__(self, window_s: float = LOGIN_WINDOW_S, max_failures: int = MAX_FAILURES_PER_WINDOW) -> None:
        self._window_s = window_s
        self._max_failures = max_failures
        self._failures: collections.deque[float] = collections.deque()
        self.refused = 0  # logins refused unchecked, for the log and the tests

    def retry_after_s(self) -> float:
        """0 when a login may be checked now; else the seconds until the oldest failure leaves the window."""
        now = time.monotonic()
        while self._failures and now - self._failures[0] >= self._window_s:
            self._failures.popleft()
        if len(self._failures) < self._max_failures:
            return 0.0
        self.refused += 1
        return self._window_s - (now - self._failures[0])

    def failed(self) -> float:
        """Count an attempt as wrong (until forgiven); returns its stamp for forgive()."""
        stamp = time.monotonic()
        self._failures.append(stamp)
        return stamp

    def forgive(self, stamp: float) -> None:
        """The attempt was right after all: it does not count."""
        try:
            self._failures.remove(stamp)
        except ValueError:
            pass  # already out of the window
