"""HTTP faces of pocsdk: the compression service (``pocsdk serve``) and shared server pieces.

Importing this package needs the ``server`` extra (fastapi, uvicorn, prometheus-client);
the rest of pocsdk never imports it.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str) -> object:
    # Lazy so that ``pocsdk.server.common`` can be imported without building the service module.
    if name == "create_app":
        from pocsdk.server.service import create_app

        return create_app
    raise AttributeError(name)
