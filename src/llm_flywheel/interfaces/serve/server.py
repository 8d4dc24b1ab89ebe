"""Running the app: uvicorn with a bounded graceful shutdown."""

from __future__ import annotations

from fastapi import FastAPI

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def serve_forever(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Run the app with uvicorn (blocking).  On SIGTERM/SIGINT it stops accepting, gives in-flight requests
    ``shutdown_grace_s`` to finish, then runs the app's own bounded shutdown (feedback written, teacher calls
    cancelled)."""
    import uvicorn

    st = getattr(app.state, "serve", None)
    grace = round(st.cfg.shutdown_grace_s) if st is not None else 10
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=grace)
