"""Keep credentials out of everything a run writes: config dumps, logs, samples, W&B files.

Two complementary defences, because neither is enough alone:
- `redact` blanks config values whose *key* names a credential (`api_key`, `hf_token`, ...);
- `scrub` removes credential *values* wherever they appear in text, using the values of
  credential-named environment variables (e.g. `WANDB_API_KEY`) and of redacted config keys, so a
  secret that leaks into a log line or an error message is still caught.
Key matching looks at the last `_`/`-`/`.`-separated word so `api_key` and `hf_token` are secrets
but `max_new_tokens` and `stop_token_ids` are not.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable

REDACTED = "<redacted>"
_SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "credential",
                           "credentials"})
_MIN_SECRET_LEN = 6  # shorter values would scrub ordinary words and numbers


def is_secret_key(name: str) -> bool:
    """True for names like `api_key`, `WANDB_API_KEY`, `hf_token`, `password`, `apiKey`."""
    words = [w for w in re.split(r"[^a-z0-9]+", str(name).lower()) if w]
    if not words:
        return False
    return words[-1] in _SECRET_WORDS or words[-1].endswith(("apikey", "secret", "password"))


def redact(obj: Any) -> Any:
    """A copy of `obj` with the value of every credential-named key replaced by `<redacted>`."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


def secret_values(config: Any = None, environ: dict[str, str] | None = None) -> set[str]:
    """Values to scrub: credential-named environment variables and config keys."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if is_secret_key(k) and len(v) >= _MIN_SECRET_LEN}
    found.update(_config_secrets(config))
    return found


def _config_secrets(obj: Any) -> Iterable[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if is_secret_key(k) and isinstance(v, str) and len(v) >= _MIN_SECRET_LEN:
                yield v
            else:
                yield from _config_secrets(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _config_secrets(v)


class Scrubber:
    """Replaces known secret values in strings (and, recursively, in JSON-like structures)."""

    def __init__(self, secrets: Iterable[str]):
        ordered = sorted({s for s in secrets if s}, key=len, reverse=True)  # longest first
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def text(self, s: str) -> str:
        return self._pattern.sub(REDACTED, s) if self._pattern is not None else s

    def obj(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {k: self.obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.obj(v) for v in obj]
        return obj


class ScrubFilter(logging.Filter):
    """A handler filter that scrubs secrets from each record's final message before it is written."""

    def __init__(self, scrubber: Scrubber):
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrubber.text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_scrubber(scrubber: Scrubber, logger: logging.Logger | None = None) -> None:
    """Put a `ScrubFilter` on every handler of `logger` (root by default), replacing older ones.

    Handler filters (not logger filters) see records propagated from every module's logger.
    """
    for handler in (logger or logging.getLogger()).handlers:
        for old in [f for f in handler.filters if isinstance(f, ScrubFilter)]:
            handler.removeFilter(old)
        handler.addFilter(ScrubFilter(scrubber))
