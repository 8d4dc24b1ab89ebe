"""`flywheel serve`: the calibrated cascade over HTTP (the service itself lives in ``interfaces/serve``)."""

from __future__ import annotations

import re
import signal
import socket
import threading
from typing import Any

import click

from llm_flywheel.interfaces.cli import Ctx, config_error, console, pass_ctx
from llm_flywheel.interfaces.cli.commands import open_dataset
from llm_flywheel.interfaces.cli.commands.cascade import TEACHER_HELP, _teacher
from llm_flywheel.pipeline.served_model import check_served_model
from llm_flywheel.teachers.errors import TeacherConfigError


@click.command(epilog="\b\nExamples:\n"
               "  flywheel serve fashion-mnist --port 8000 --teacher openrouter:google/gemini-2.5-flash\n"
               "  curl -F file=@shirt.png http://127.0.0.1:8000/v1/predict\n"
               "  curl -H 'Content-Type: application/json' -d '{\"image_base64\": \"...\"}' "
               "http://127.0.0.1:8000/v1/predict\n"
               "  curl -H 'Content-Type: application/json' -d '{\"inputs\": [{\"image_base64\": \"...\"}, ...]}' "
               "http://127.0.0.1:8000/v1/predict/batch\n"
               "  curl http://127.0.0.1:8000/readyz      # readiness (model, store, teacher breaker)\n"
               "  curl http://127.0.0.1:8000/metrics     # Prometheus\n"
               "  open http://127.0.0.1:8000/docs        # OpenAPI docs\n"
               "  flywheel serve fashion-mnist --replicas 2                    # 2 Ray Serve replicas, one port\n"
               "  flywheel serve fashion-mnist --replicas 2 --min-replicas 1 --max-replicas 8   # autoscaling\n")
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
@click.option("--max-batch", type=int, default=64, show_default=True,
              help="Most inputs in one POST /v1/predict/batch (its body is bounded by --max-bytes too).")
@click.option("--workers", type=int, default=2, show_default=True,
              help="Threads that decode inputs and run the student.")
@click.option("--queue", type=int, default=64, show_default=True,
              help="Requests that may wait for a worker; more are answered 503 with Retry-After.")
@click.option("--deadline", "deadline_s", type=float, default=3.0, show_default=True,
              help="Seconds a deferred request waits for the teacher before the student's answer is returned, "
                   "marked student_fallback.")
@click.option("--on-deadline", type=click.Choice(["fallback", "error"]), default="fallback", show_default=True,
              help="At the deadline: the student's answer (fallback) or HTTP 504 (error).")
@click.option("--teacher-budget-usd", type=float, default=None,
              help="Most USD the teacher may be paid for served inputs per --teacher-budget-hours, counted over every "
                   "process on the store; over it, deferred inputs get the student's answer (student_fallback). Needs "
                   "answers that carry a cost: a local server is capped with --teacher-max-calls. Default: no cap.")
@click.option("--teacher-max-calls", type=int, default=None,
              help="Most teacher answers bought per --teacher-budget-hours (any server). Default: no cap.")
@click.option("--teacher-budget-hours", type=float, default=24.0, show_default=True,
              help="The rolling window of --teacher-budget-usd and --teacher-max-calls.")
@click.option("--teacher-concurrency", type=int, default=None,
              help="Teacher calls this process makes at once (more wait, within each request's deadline). Default: "
                   "4 for a server on your own hardware (loopback, private address), 16 otherwise.")
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
@click.option("--follow-promoted", "follow_promoted_s", type=float, default=30.0, show_default=True,
              help="Seconds between checks for a newly promoted model (the wheel's), swapped in without a restart "
                   "(0: never; --version pins a model).")
@click.option("--replicas", type=click.IntRange(min=1), default=None,
              help="Run N replicas of the service on Ray Serve behind one HTTP port (needs the [ray] extra); each "
                   "opens the workspace's store itself and they share its cache of teacher answers. Default: one "
                   "process, no Ray.")
@click.option("--min-replicas", type=click.IntRange(min=1), default=None,
              help="With --replicas: autoscale, never below this many replicas.")
@click.option("--max-replicas", type=click.IntRange(min=1), default=None,
              help="With --replicas: autoscale, never above this many replicas.")
@click.option("--ray-address", default=None,
              help="With --replicas: join this Ray cluster (auto, HOST:PORT, ray://...) instead of starting a local "
                   "one. Its nodes need the workspace folder at the same path (shared storage), a store they all "
                   "reach (PostgreSQL) and the teacher's API key in their environment.")
@pass_ctx
def serve(ctx: Ctx, dataset: str, host: str, port: int, version: str | None, spec: str | None,
          api_key_env: str | None, threshold: float | None, replicas: int | None, min_replicas: int | None,
          max_replicas: int | None, ray_address: str | None, **limits: object) -> None:
    """Serve DATASET's calibrated cascade over HTTP: POST /v1/predict (one input) and /v1/predict/batch (many),
    GET /healthz, /readyz, /metrics, /docs."""
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
    if config.spend_capped and not spec:
        raise config_error("--teacher-budget-usd / --teacher-max-calls cap a teacher: give --teacher SPEC")
    scaling = _scaling(replicas, min_replicas, max_replicas)
    if scaling is None and ray_address is not None:
        raise config_error("--ray-address needs --replicas N (one process does not use Ray)")
    _check_address(host, port)
    if scaling is not None:
        _serve_replicas(ws, dataset, host, port, scaling, ray_address,
                        dict(version=version, spec=spec, api_key_env=api_key_env, threshold=threshold), config)
        return
    with _teacher(ws, dataset, spec, api_key_env) as teacher:
        try:
            app = create_app(ws, dataset, version=version, teacher=teacher, threshold=threshold, config=config)
        except TeacherConfigError as e:  # e.g. a local server now serving another model under a cached name
            raise config_error(str(e)) from None
        except (StoreError, StudentError, CascadeError, ValueError) as e:
            raise click.ClickException(str(e)) from None
        d = app.state.serve.cascade.describe()
        console.print(f"serving {dataset} model {d['model_version']} (threshold {d['threshold']:.4f}, "
                      f"teacher: {d['teacher'] or 'none -> deferred answers have no label'}) on http://{host}:{port}")
        serve_forever(app, host, port, log_level="warning" if ctx.verbose == 0 else "info")


def _scaling(replicas: int | None, min_replicas: int | None, max_replicas: int | None) -> Any:
    """None (one process) or the replicas' Scaling; bounds without --replicas, or out of order, are exit 2."""
    if replicas is None:
        if min_replicas is not None or max_replicas is not None:
            raise config_error("--min-replicas/--max-replicas need --replicas N (the replicas to start with)")
        return None
    from llm_flywheel.interfaces.serve.replicas import Scaling

    try:
        return Scaling(replicas, min_replicas, max_replicas)
    except ValueError as e:
        raise config_error(str(e).replace("min_replicas", "--min-replicas").replace("max_replicas", "--max-replicas")
                           .replace(" replicas ", " --replicas ")) from None


def _serve_replicas(ws: Any, dataset: str, host: str, port: int, scaling: Any, ray_address: str | None,
                    opts: dict[str, Any], config: Any) -> None:
    """--replicas: the same app on Ray Serve until SIGINT/SIGTERM, then serve.shutdown() and ray.shutdown()."""
    from llm_flywheel.interfaces.serve.replicas import RayServeDeployment, RayUnavailable, ReplicaSpec
    from llm_flywheel.pipeline.cascade import Cascade, CascadeError
    from llm_flywheel.store.base import StoreError
    from llm_flywheel.students.base import StudentError

    try:
        Cascade.from_store(ws, dataset, version=opts["version"], threshold=opts["threshold"]).close()
    except (StoreError, StudentError, CascadeError, ValueError) as e:  # before starting Ray: no model, bad version
        raise click.ClickException(str(e)) from None
    with _teacher(ws, dataset, opts["spec"], opts["api_key_env"]) as teacher:
        if teacher is not None:  # before Ray starts, as the single process checks in create_app
            try:
                with ws.store() as s:
                    check_served_model(s, teacher)
            except TeacherConfigError as e:
                raise config_error(str(e)) from None
        tspec, key_env = opts["spec"], opts["api_key_env"]
        if tspec == "simulated":  # the simulated teacher runs in this process: replicas call it by URL
            tspec, key_env = f"{teacher.base_url}|{teacher.model}", ""
        spec = ReplicaSpec(str(ws.root), dataset, opts["version"], tspec, key_env, opts["threshold"], config)
        try:
            dep = RayServeDeployment(spec, scaling, host=host, port=port, ray_address=ray_address)
        except RayUnavailable as e:
            raise config_error(str(e)) from None
        stop = threading.Event()
        previous: dict[int, Any] = {}

        def drain_on_signals() -> None:
            # after ray.init, before the replicas come up: Ray's core installs its own SIGTERM handler (it aborts
            # the process, leaving the replicas to Ray's fate-sharing); ours drains them through serve.shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM):
                old = signal.signal(sig, lambda *_: stop.set())
                previous.setdefault(sig, old)

        try:
            try:
                url = dep.start(on_connected=drain_on_signals)
            except (RuntimeError, TimeoutError) as e:
                raise click.ClickException(str(e)) from None
            lo, hi = scaling.bounds
            console.print(f"serving {dataset} on {url} with {dep.replicas_running()} Ray Serve replicas"
                          + (f" (autoscaling {lo}-{hi})" if scaling.autoscaling else "") + "; Ctrl-C to stop")
            while not stop.wait(0.5):
                pass
            console.print("stopping the replicas ...")
        finally:
            dep.stop()
            for sig, handler in previous.items():
                if handler is not None:  # None: a handler installed outside Python (Ray's), nothing to restore
                    signal.signal(sig, handler)


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
