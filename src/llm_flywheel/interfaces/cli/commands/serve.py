"""`flywheel serve`: the calibrated cascade over HTTP (the service itself lives in ``interfaces/serve``)."""

from __future__ import annotations

import re
import socket

import click

from llm_flywheel.interfaces.cli import Ctx, config_error, console, pass_ctx
from llm_flywheel.interfaces.cli.commands import open_dataset
from llm_flywheel.interfaces.cli.commands.cascade import TEACHER_HELP, _teacher


@click.command(epilog="\b\nExamples:\n"
               "  flywheel serve fashion-mnist --port 8000 --teacher openrouter:google/gemini-2.5-flash\n"
               "  curl -F file=@shirt.png http://127.0.0.1:8000/v1/predict\n"
               "  curl -H 'Content-Type: application/json' -d '{\"image_base64\": \"...\"}' "
               "http://127.0.0.1:8000/v1/predict\n"
               "  curl http://127.0.0.1:8000/readyz      # readiness (model, store, teacher breaker)\n"
               "  curl http://127.0.0.1:8000/metrics     # Prometheus\n"
               "  open http://127.0.0.1:8000/docs        # OpenAPI docs\n")
@click.argument("dataset")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; loopback by default because there is no authentication.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--version", help="Model version (default: the serving model -- the promoted student, else the newest student; a gold-trained reference model only when named).")
@click.option("--teacher", "spec", default=None, help=TEACHER_HELP)
@click.option("--api-key-env", default=None, help="Environment variable holding the teacher's API key.")
@click.option("--threshold", type=float, help="Override the calibrated threshold (the guarantee no longer applies).")
@click.option("--max-bytes", type=int, default=8 * 1024 * 1024, show_default=True,
              help="Largest request body accepted (larger: HTTP 413).")
@click.option("--max-image-pixels", type=int, default=40_000_000, show_default=True,
              help="Largest image accepted, in pixels, read from the header before decoding (larger: HTTP 413).")
@click.option("--log-sample-rate", type=float, default=1.0, show_default=True,
              help="Fraction of answered requests logged to the store as feedback for the wheel.")
@click.option("--max-logged-payload-bytes", type=int, default=256 * 1024, show_default=True,
              help="Inputs up to this size are kept under exports/served/ with their log row (0: keep none).")
@click.option("--workers", type=int, default=2, show_default=True,
              help="Threads that decode inputs and run the student.")
@click.option("--queue", type=int, default=64, show_default=True,
              help="Requests that may wait for a worker; more are answered 503 with Retry-After.")
@click.option("--deadline", "deadline_s", type=float, default=3.0, show_default=True,
              help="Seconds a deferred request waits for the teacher before the student's answer is returned, "
                   "marked student_fallback.")
@click.option("--on-deadline", type=click.Choice(["fallback", "error"]), default="fallback", show_default=True,
              help="At the deadline: the student's answer (fallback) or HTTP 504 (error).")
@click.option("--breaker-failures", type=int, default=5, show_default=True,
              help="Consecutive teacher failures that open the circuit breaker (no calls during the cool-down).")
@click.option("--breaker-cooldown", "breaker_cooldown_s", type=float, default=30.0, show_default=True,
              help="Seconds the breaker stays open before one probe call.")
@click.option("--shutdown-grace", "shutdown_grace_s", type=float, default=10.0, show_default=True,
              help="Seconds in-flight requests get to finish on SIGTERM.")
@click.option("--retention-days", "retention_max_age_days", type=float, default=None,
              help="Delete served-traffic cascade_log rows and saved inputs older than this many days (never the "
                   "rows of store items: the wheel's feedback). Default: keep everything.")
@click.option("--retention-rows", "retention_max_rows", type=int, default=None,
              help="Keep at most this many cascade_log rows (oldest served-traffic rows deleted first; rows of store "
                   "items always kept).")
@click.option("--retention-bytes", "retention_max_payload_bytes", type=int, default=None,
              help="Keep at most this many bytes of saved inputs under exports/served/ (oldest deleted first).")
@pass_ctx
def serve(ctx: Ctx, dataset: str, host: str, port: int, version: str | None, spec: str | None,
          api_key_env: str | None, threshold: float | None, **limits: object) -> None:
    """Serve DATASET's calibrated cascade over HTTP: POST /v1/predict, GET /healthz, /readyz, /metrics, /docs."""
    from llm_flywheel.interfaces.serve import ServeConfig, create_app, is_loopback, serve_forever
    from llm_flywheel.pipeline.cascade import CascadeError
    from llm_flywheel.store.base import StoreError
    from llm_flywheel.students.base import StudentError

    if not is_loopback(host):
        console.print(f"[bold yellow]warning:[/] listening on {host}, not loopback: the service has no "
                      "authentication; put it behind your own gateway")
    ws = open_dataset(ctx, dataset)
    try:
        config = ServeConfig(**limits)  # type: ignore[arg-type]
    except ValueError as e:  # a bad option value: exit 2, the message naming the option rather than the field
        msg = str(e)
        for param in click.get_current_context().command.params:
            msg = re.sub(rf"\b{param.name}\b", param.opts[0], msg) if param.opts else msg
        raise config_error(msg) from None
    _check_address(host, port)
    with _teacher(ws, dataset, spec, api_key_env) as teacher:
        try:
            app = create_app(ws, dataset, version=version, teacher=teacher, threshold=threshold, config=config)
        except (StoreError, StudentError, CascadeError, ValueError) as e:
            raise click.ClickException(str(e)) from None
        d = app.state.cascade.describe()
        console.print(f"serving {dataset} model {d['model_version']} (threshold {d['threshold']:.4f}, "
                      f"teacher: {d['teacher'] or 'none -> deferred answers have no label'}) on http://{host}:{port}")
        serve_forever(app, host, port, log_level="warning" if ctx.verbose == 0 else "info")


def _check_address(host: str, port: int) -> None:
    """Bind and release HOST:PORT before loading anything: a port in use or an address this machine does not have
    is exit 2 naming the option, where uvicorn printed its own error after "serving ... on" and exited 3 (which
    `flywheel --help` documents as a teacher error)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):  # SO_REUSEADDR, as uvicorn binds
            pass
    except OSError as e:
        why = e.strerror or str(e)
        raise config_error(f"cannot listen on {host}:{port} ({why}); pick another --port, stop what is listening "
                           f"there, or give a --host this machine has (default 127.0.0.1)") from None
