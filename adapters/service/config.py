"""What a service process is configured with, passed to worker processes by environment.

``optical-memory serve`` puts its options into the environment and starts uvicorn with
:func:`optical_memory.adapters.service.app.app_from_env` as the app factory, so every worker
process (``--workers N``) builds the same app from the same settings.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

from optical_memory.errors import InvalidConfiguration, InvalidInput
from optical_memory.scheduler import check_interval
from optical_memory.validation import check_owner

__all__ = ["ENV_PREFIX", "LOOPBACK", "ServiceConfig"]

ENV_PREFIX = "OPTICAL_MEMORY_SERVICE_"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of one service.

    ``auth``: require ``Authorization: Bearer KEY`` (False only on loopback, see
    :meth:`check`); ``owner``: whose namespace an unauthenticated service serves.
    ``upstream_url``: where the proxy forwards chat completions (``…/v1``), with
    ``upstream_api_key``; ``budget``/``target``: the proxy's defaults, overridden per request
    by the ``X-Memory-Budget``/``X-Memory-Target`` headers. ``age_every``: seconds between the
    scheduler's aging passes (0: no scheduler). ``max_body_bytes``: larger requests get 413.
    ``key_cache_seconds``: how long a process remembers which owner a key acts for (a revoked
    key is refused at the latest this long after ``keys revoke``; 0: look up every request).
    """

    db: str | None = None
    host: str = "127.0.0.1"
    auth: bool = True
    owner: str | None = None
    upstream_url: str | None = None
    upstream_api_key: str | None = None
    budget: int = 4096
    target: str = "deepseek-ocr"
    age_every: float = 300.0
    max_body_bytes: int = 4 * 1024 * 1024
    key_cache_seconds: float = 5.0

    def check(self) -> ServiceConfig:
        """Refuse settings that would expose an open memory or make no sense."""
        if not self.auth and self.host not in LOOPBACK:
            raise InvalidConfiguration(
                f"refusing to serve without API keys on {self.host}: bind to 127.0.0.1, or "
                "create a key with `optical-memory keys create --owner NAME`"
            )
        if self.budget <= 0 or self.max_body_bytes <= 0:
            raise InvalidConfiguration("budget and max body size must be positive")
        if not (math.isfinite(self.key_cache_seconds) and self.key_cache_seconds >= 0):
            raise InvalidConfiguration("key_cache_seconds must be a finite number >= 0")
        if self.age_every != 0:  # 0: no scheduler; else what the scheduler takes
            try:
                check_interval(self.age_every)
            except InvalidConfiguration as exc:
                raise InvalidConfiguration(f"age_every (0: no scheduler): {exc}") from None
        try:
            check_owner(self.owner)
        except InvalidInput as exc:
            raise InvalidConfiguration(f"owner: {exc}") from None
        return self

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, for worker processes."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[ENV_PREFIX + f.name.upper()] = str(
                    int(value) if isinstance(value, bool) else value
                )
        return out

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServiceConfig:
        env = dict(os.environ) if env is None else env
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            default = f.default
            if isinstance(default, bool):
                kwargs[f.name] = raw not in ("0", "false", "")
            elif isinstance(default, int):
                kwargs[f.name] = int(raw)
            elif isinstance(default, float):
                kwargs[f.name] = float(raw)
            else:
                kwargs[f.name] = raw
        return cls(**kwargs).check()  # type: ignore[arg-type]
