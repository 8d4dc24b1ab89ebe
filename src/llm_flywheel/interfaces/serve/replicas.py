"""The same service on Ray Serve replicas: ``flywheel serve DATASET --replicas N`` (the optional ``[ray]`` extra).

Why it is built this way:
- **One app, not a fork.** Each replica builds the very FastAPI app :func:`create_app` builds for one process (Ray
  Serve's late-bound ingress, ``__serve_build_asgi_app__``), so limits, pools, the deadline, the breaker, the
  feedback log and ``/readyz`` behave the same behind Ray Serve's HTTP proxy as behind uvicorn.
- **Each replica opens the workspace itself**, by its root path; the store it names (the workspace's SQLite file
  today, the URL recorded in the workspace or ``FLYWHEEL_STORE``) is shared by every replica, and so is the
  content-hash cache of teacher answers: a claim in the store makes one replica pay for new content while another
  waits for the stored answer.  ``FLYWHEEL_*`` variables travel to the replicas in Ray's ``runtime_env``; a secret
  never does (an API key, a store URL with a password: Ray records a runtime_env): a local cluster started here
  inherits this process's environment, the nodes of another cluster need them in theirs.
- **Ray is imported lazily**: without it, ``--replicas`` fails with the ``pip install`` that fixes it, and the
  single-process path never imports it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llm_flywheel.interfaces.serve.config import ServeConfig
from llm_flywheel.pipeline.ray_env import env_for_ray

RAY_MISSING = "Ray Serve is not installed; `flywheel serve --replicas` needs it: pip install 'llm-flywheel[ray]'"
APP_NAME = "flywheel"


class RayUnavailable(RuntimeError):
    """Ray (with Serve) cannot be imported; the message names the ``pip install`` that fixes it."""


def import_ray() -> tuple[Any, Any]:
    """``(ray, ray.serve)`` or :class:`RayUnavailable` naming the fix."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise RayUnavailable(f"{RAY_MISSING} ({e})") from None
    return ray, serve


@dataclass(frozen=True)
class ReplicaSpec:
    """What a replica needs to build its own app: plain values (it is pickled to every replica)."""

    root: str
    dataset: str
    version: str | None = None
    teacher_spec: str | None = None
    api_key_env: str | None = None
    threshold: float | None = None
    config: ServeConfig = field(default_factory=ServeConfig)


@dataclass(frozen=True)
class Scaling:
    """``replicas`` fixed, or autoscaling between ``min_replicas`` and ``max_replicas`` starting at ``replicas``.

    Why these Ray settings: a replica admits ``workers + queue`` requests, like one process (its own pool still
    answers 503 + Retry-After past that), and Ray's proxy queues at most ``queue`` more (then 503 too) instead of
    holding requests without bound; autoscaling aims at ``4 x workers`` requests in flight per replica, where one
    process's p99 was still flat in ``bench_serve.py`` (it rose past ~8).
    """

    replicas: int
    min_replicas: int | None = None
    max_replicas: int | None = None
    cpus_per_replica: float = 1.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.cpus_per_replica <= 0:
            raise ValueError(f"cpus_per_replica must be > 0, got {self.cpus_per_replica}")
        lo, hi = self.bounds
        if not 1 <= lo <= self.replicas <= hi:
            raise ValueError(f"need 1 <= min_replicas <= replicas <= max_replicas, got {lo} <= {self.replicas} <= {hi}")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def bounds(self) -> tuple[int, int]:
        lo = self.min_replicas if self.min_replicas is not None else min(1, self.replicas)
        hi = self.max_replicas if self.max_replicas is not None else self.replicas
        return (lo, hi) if self.autoscaling else (self.replicas, self.replicas)

    def deployment_options(self, cfg: ServeConfig) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.cpus_per_replica,
                                  "runtime_env": {"env_vars": env_for_ray()}},
            "max_ongoing_requests": cfg.workers + cfg.queue,
            "max_queued_requests": max(1, cfg.queue),
            "graceful_shutdown_timeout_s": max(1.0, cfg.shutdown_grace_s),
            "health_check_period_s": 5.0,
        }
        if self.autoscaling:
            lo, hi = self.bounds
            opts["autoscaling_config"] = {"min_replicas": lo, "initial_replicas": self.replicas, "max_replicas": hi,
                                          "target_ongoing_requests": 4 * cfg.workers}
        else:
            opts["num_replicas"] = self.replicas
        return opts


def build_replica_app(spec: ReplicaSpec) -> Any:
    """Inside a replica: open the workspace (and the store it names) and build the one-process app."""
    from llm_flywheel.interfaces.serve.app import create_app
    from llm_flywheel.store.workspace import Workspace

    ws = Workspace.open(spec.root, create=False)
    return create_app(ws, spec.dataset, version=spec.version, teacher_spec=spec.teacher_spec,
                      api_key_env=spec.api_key_env, threshold=spec.threshold, config=spec.config)


def _deployment(serve: Any, spec: ReplicaSpec, scaling: Scaling) -> Any:
    """The Ray Serve application: one deployment whose replicas each build the app from ``spec``."""

    @serve.ingress()
    class FlywheelReplica:
        def __init__(self, spec: ReplicaSpec) -> None:
            self.spec = spec
            self.flywheel_app: Any = None  # (``app`` is Ray's own property)

        def __serve_build_asgi_app__(self) -> Any:
            self.flywheel_app = build_replica_app(self.spec)
            return self.flywheel_app

        def check_health(self) -> None:
            """Ray restarts a replica whose app never became ready (its /readyz says why)."""
            st = getattr(getattr(self.flywheel_app, "state", None), "serve", None)
            if st is not None and not st.ready:
                raise RuntimeError("the cascade is not loaded")

    dep = serve.deployment(name="cascade", **scaling.deployment_options(spec.config))(FlywheelReplica)
    return dep.bind(spec)


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """Start the local cluster's daemons (GCS, raylet, ...) with SIGINT ignored, which they inherit: they share this
    process's group, so a terminal's Ctrl-C would otherwise kill them before the replicas are drained."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class RayServeDeployment:
    """Start (or join) a Ray cluster, run the replicas behind Ray Serve's HTTP proxy on ``host:port``, stop them.

    ``ray_address`` None starts a local cluster for this process (stopped again by :meth:`stop`); an address
    (``auto``, ``ray://...``, ``HOST:PORT``) joins a running one and leaves it running, as does a process that
    is already connected (``ray.init`` called before).
    """

    def __init__(self, spec: ReplicaSpec, scaling: Scaling, *, host: str = "127.0.0.1", port: int = 8000,
                 ray_address: str | None = None, num_cpus: int | None = None) -> None:
        self.spec, self.scaling, self.host, self.port = spec, scaling, host, port
        self.ray_address, self.num_cpus = ray_address, num_cpus
        self.ray, self.serve = import_ray()
        self._started_ray = False  # we started the local cluster: stop it all
        self._connected = False  # we called ray.init: disconnect at stop

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 300.0, *, on_connected: Callable[[], None] | None = None) -> str:
        """Deploy and wait until every replica is running; returns the base URL.  A replica that cannot build
        its app (no model, a bad teacher spec) fails here with Ray's message, after everything is stopped.

        ``on_connected`` runs right after ``ray.init``, before anything is deployed: the place to install signal
        handlers, because ``ray.init`` installs Ray's own SIGTERM handler (it aborts the process) and a SIGTERM
        that arrives while the replicas come up must still drain them."""
        if self.ray.is_initialized():  # this process already runs or joined a cluster (a test's): use it as is
            pass
        elif self.ray_address is None:
            _, hi = self.scaling.bounds
            cpus = self.num_cpus or max(os.cpu_count() or 1, int(hi * self.scaling.cpus_per_replica + 0.999))
            # (Ray's own services bind to the node's address whatever is asked: it resolves 127.0.0.1 to it; the
            # service's HTTP port is the proxy's, on ``host``)
            with _sigint_ignored_by_children():
                self.ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                              configure_logging=False, log_to_driver=False)
            self._started_ray = self._connected = True
        else:
            self.ray.init(address=self.ray_address, configure_logging=False)
            self._connected = True
        try:
            if on_connected is not None:
                on_connected()
            self._start_proxy()
            try:
                self.serve.run(_deployment(self.serve, self.spec, self.scaling), name=APP_NAME, route_prefix="/",
                               blocking=False)
            except RuntimeError as e:
                raise RuntimeError(f"the replicas did not start: {self._replica_error() or e}") from None
            self._wait_running(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _start_proxy(self) -> None:
        """Ray Serve's HTTP proxy on ``host:port``.  Ray gives it 60 s to come up and then kills it: on a busy
        machine (a cold cluster importing torch in every worker) that ended ``flywheel serve`` in a Ray traceback."""
        try:
            self.serve.start(http_options={"host": self.host, "port": self.port}, proxy_location="HeadOnly")
        except self.ray.exceptions.RayError as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RuntimeError(f"Ray Serve's HTTP proxy on {self.host}:{self.port} did not start ({type(e).__name__}: "
                               f"{why}); Ray gives it 60 s, which a busy machine can miss -- run it again, or start "
                               "the cluster first (`ray start --head`) and pass --ray-address auto") from None

    def _wait_running(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while True:
            st = self.serve.status().applications.get(APP_NAME)
            status = str(getattr(st, "status", "")) if st is not None else ""
            if status.endswith("RUNNING"):
                return
            if status.endswith("DEPLOY_FAILED") or status.endswith("UNHEALTHY"):
                raise RuntimeError(f"the replicas did not start: {getattr(st, 'message', '') or status}")
            if time.monotonic() > end:
                raise TimeoutError(f"the replicas were not running after {timeout_s:g} s (status {status or 'none'})")
            time.sleep(0.2)

    def _replica_error(self) -> str | None:
        """The last line of the first failed replica's error (Ray's status holds the whole traceback)."""
        try:
            st = self.serve.status().applications.get(APP_NAME)
        except Exception:
            return None
        for d in (st.deployments.values() if st is not None else ()):
            lines = [ln.strip() for ln in (d.message or "").splitlines() if ln.strip()]
            if lines:
                return lines[-1]
        return None

    def replicas_running(self) -> int:
        st = self.serve.status().applications.get(APP_NAME)
        if st is None:
            return 0
        return sum(d.replica_states.get("RUNNING", 0) for d in st.deployments.values())

    def stop(self) -> None:
        """Drain the replicas (each runs its app's bounded shutdown: feedback written, teacher calls cancelled),
        stop the proxy, and stop the local cluster if this process started it."""
        try:
            if self.ray.is_initialized():
                if self._started_ray:
                    self.serve.shutdown()
                else:  # a cluster we joined: remove our application only
                    self.serve.delete(APP_NAME)
        finally:
            if self._connected and self.ray.is_initialized():
                self.ray.shutdown()
            self._started_ray = self._connected = False
