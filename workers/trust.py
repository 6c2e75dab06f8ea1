"""What a service worker trusts: whether its deployments' sources may come from any folder.

A worker cannot see the API server's token store; it goes by what it knows itself.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from config.settings import Settings
from config.sources import is_loopback


def open_mode(settings: Settings) -> bool:
    """True when the worker's API server is on this machine's loopback and the worker uses no
    API token: then whoever deployed is this machine's user (``config.sources``).

    WIRE (auth): ``and not <the worker's token>`` (``CELERIAC_TOKEN`` or the profile's).
    """
    return is_loopback(urlsplit(settings.server).hostname or "")
