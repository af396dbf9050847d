"""``rtseg serve``: a web page and an HTTP / WebSocket API for live segmentation (optional extra ``rtseg[serve]``).

``create_app(segmenter)`` builds the ASGI app around one loaded :class:`rtseg.Segmenter`; ``serve(weights, ...)``
loads the model and runs it with uvicorn (what the ``rtseg serve`` command calls). Importing this package needs
nothing beyond rtseg; :func:`missing_dependencies` says what the extra would add.
"""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = ["EXTRA_HINT", "create_app", "missing_dependencies", "serve"]

#: distribution name -> import name of what the server needs beyond rtseg's own dependencies
REQUIREMENTS = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python-multipart": "python_multipart",
                "websockets": "websockets"}
EXTRA_HINT = "pip install 'rtseg[serve]'"


def missing_dependencies() -> list[str]:
    """Distribution names of the ``rtseg[serve]`` packages that are not importable here (cheap: no import)."""
    return [dist for dist, mod in REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`rtseg.serve.app.create_app` (imported on first use: FastAPI is optional)."""
    from rtseg.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def serve(*args: Any, **kwargs: Any) -> None:
    """See :func:`rtseg.serve.app.serve`."""
    from rtseg.serve.app import serve as _serve

    return _serve(*args, **kwargs)
