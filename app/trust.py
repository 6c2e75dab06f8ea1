"""Whether every caller of the server is the server's own user (open mode).

Then deployment sources may come from any folder that user can read (``config.sources``).
Asked on every deploy, so a token created while the server runs closes the open mode at once.
"""

from __future__ import annotations

from app.control.tokens import Tokens
from config.settings import Settings, is_loopback


def open_mode(settings: Settings, tokens: Tokens) -> bool:
    """True while the server listens on loopback only and no live API token exists."""
    return is_loopback(settings.host) and not tokens.any_live()
