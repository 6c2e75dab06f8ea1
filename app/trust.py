"""What the server trusts its callers with: the two questions the API's authentication answers.

Both are asked here and nowhere else, so that wiring them to the token store is one change:

- ``open_mode``: is every caller the server's own user? Then deployment sources may come from
  any folder that user can read (``config.sources``).
- ``may_see_internals``: may this request's caller see tracebacks and server paths?
"""

from __future__ import annotations

from config.settings import Settings
from config.sources import is_loopback


def open_mode(settings: Settings) -> bool:
    """True while the server listens on loopback only and no API token exists.

    WIRE (auth): ``and not tokens.exist()``; asked on every deploy, so a token created while
    the server runs closes the open mode at once.
    """
    return is_loopback(settings.host)


def may_see_internals() -> bool:
    """Whether the caller of the request being served may see tracebacks and server paths.

    WIRE (auth): True for a caller holding the ``admin`` scope. Until then, no caller does.
    """
    return False
