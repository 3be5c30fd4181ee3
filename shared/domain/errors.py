"""Domain errors. They say what went wrong, not which HTTP status it is: the API maps them
to statuses in one table (services/api/problems.py); the matcher maps them to error frames."""

from __future__ import annotations


class RedlineError(Exception):
    """Base of every error Redline raises on purpose."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(RedlineError):
    """The thing does not exist, or the caller may not know that it does."""


class Unauthenticated(RedlineError):
    """Missing, malformed, unknown or expired credentials."""


class Forbidden(RedlineError):
    """Authenticated, but this action is not the caller's to take (never used to hide existence)."""


class Conflict(RedlineError):
    """The request contradicts the current state (stale version, taken username)."""

    def __init__(self, detail: str, *, current_version: int | None = None) -> None:
        super().__init__(detail)
        self.current_version = current_version


class TooLarge(RedlineError):
    """A body or field is over its configured limit."""

    def __init__(self, detail: str, *, limit: int) -> None:
        super().__init__(detail)
        self.limit = limit


class InvalidInput(RedlineError):
    """Input that parsed but makes no sense (the API answers 422)."""


class RateLimited(RedlineError):
    def __init__(
        self,
        detail: str,
        *,
        retry_after_s: int,
        limit: int,
        window_s: int,
        policy: str = "default",
    ) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
        self.limit = limit
        self.window_s = window_s
        self.policy = policy  # named in the RateLimit and RateLimit-Policy headers


class Unavailable(RedlineError):
    """A dependency (Redis, Postgres) is down or too slow; nothing was lost, retry later."""

    def __init__(self, detail: str, *, dependency: str) -> None:
        super().__init__(detail)
        self.dependency = dependency
