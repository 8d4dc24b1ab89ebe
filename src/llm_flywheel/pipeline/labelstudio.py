"""A thin Label Studio client over its documented REST API: projects, task import with predictions, JSON export.

Why in ``pipeline`` (it used to sit in ``interfaces``): it is not an interface a user drives but a component the
review stage (:mod:`llm_flywheel.pipeline.review_labelstudio`) talks to, like a teacher's HTTP client; the pipeline
may not import ``interfaces``, and it is the review stage's only user, so it lives beside it rather than in a
component package of its own.

Why httpx and not ``label-studio-sdk``: the round trip needs five endpoints, and the SDK pins its own pydantic/httpx
ranges; a small client we test against a real server is cheaper to keep working.

Authentication (Label Studio >= 1.18 has two kinds of token, both shown under *Account & Settings*):
- a **Personal Access Token** (the default for new organisations) is a JWT *refresh* token: it is exchanged at
  ``POST /api/token/refresh`` for a short-lived access token sent as ``Authorization: Bearer``; we refresh again on a
  401 (access tokens live minutes);
- a **legacy token** is sent as ``Authorization: Token`` (the organisation must have legacy tokens enabled).
The token is read from an environment variable by the caller and kept only in memory: it never appears in an error
message, a log line, the store or a report.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

import httpx

from llm_flywheel.core.task import Task

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
FROM_NAME = "label"  # the <Choices> control the annotator fills in
IMPORT_BATCH = 200


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached or refused a request; the message says what to fix (never the token)."""


def is_personal_access_token(token: str) -> bool:
    """PATs are JWTs (three base64url parts, header starting ``eyJ``); legacy tokens are 40 hex characters."""
    return token.count(".") == 2 and token.startswith("eyJ")


def object_name(task: Task) -> str:
    """The data key / object tag name the labelling config uses for this task's items."""
    return "image" if task.modality == "image" else "text"


def label_config(task: Task) -> str:
    """The labelling interface for ``task``: the item (image, or text; tabular rows are shown as text), one
    single-choice question with the task's labels (descriptions as hover hints), and a line with the queue reason
    and the machine answers, so a reviewer sees why the item is there."""
    e = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    obj = object_name(task)
    tag = f'<Image name="{obj}" value="${obj}" zoom="true" zoomControl="true"/>' if obj == "image" else \
        f'<Text name="{obj}" value="${obj}"/>'
    choices = "\n".join(
        f'    <Choice value="{e(lab)}"' + (f' hint="{e(task.descriptions[lab])}"' if task.descriptions.get(lab) else "") + "/>"
        for lab in task.labels)
    header = f'  <Header value="{e(task.instructions)}"/>\n' if task.instructions else ""
    return (f"<View>\n{header}  {tag}\n"
            f'  <Choices name="{FROM_NAME}" toName="{obj}" choice="single-radio" showInline="true" required="true">\n'
            f"{choices}\n  </Choices>\n"
            f'  <Text name="why" value="$why"/>\n</View>')


def choice_result(task: Task, label: str) -> list[dict[str, Any]]:
    """A Label Studio ``result`` list choosing ``label`` (used for predictions)."""
    return [{"from_name": FROM_NAME, "to_name": object_name(task), "type": "choices", "value": {"choices": [label]}}]


def chosen_label(result: Sequence[dict[str, Any]] | None) -> str | None:
    """The label an annotation chose in our ``<Choices>`` control, or None (empty / other controls only)."""
    for r in result or []:
        if r.get("from_name") == FROM_NAME and r.get("type") == "choices":
            ch = (r.get("value") or {}).get("choices") or []
            if ch:
                return str(ch[0])
    return None


class LabelStudio:
    """One Label Studio server, one user's token."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        if not token:
            raise LabelStudioError(f"no Label Studio token: set {TOKEN_ENV} to your Personal Access Token or legacy token "
                                   "(Label Studio: Account & Settings)")
        if not url.startswith(("http://", "https://")):
            raise LabelStudioError(f"Label Studio URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self._token = token
        self._pat = is_personal_access_token(token)
        self._access: str | None = None
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport, follow_redirects=True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "LabelStudio":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        try:
            r = self._http.post("/api/token/refresh", json={"refresh": self._token})
        except httpx.HTTPError as e:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} ({type(e).__name__}); is it running?") from None
        if r.status_code != 200 or "access" not in _safe_json(r):
            raise LabelStudioError(f"Label Studio at {self.url} refused the Personal Access Token in {TOKEN_ENV} "
                                   f"(HTTP {r.status_code}); create a new one under Account & Settings")
        self._access = _safe_json(r)["access"]

    def _headers(self) -> dict[str, str]:
        if self._pat:
            if self._access is None:
                self._refresh()
            return {"Authorization": f"Bearer {self._access}"}
        return {"Authorization": f"Token {self._token}"}

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """One API call; JSON body of the answer (None when empty).  Refreshes a PAT's access token once on 401."""
        for attempt in (0, 1):
            try:
                r = self._http.request(method, path, headers=self._headers(), **kw)
            except httpx.HTTPError as e:
                raise LabelStudioError(f"cannot reach Label Studio at {self.url} ({type(e).__name__}); is it running?") from None
            if r.status_code == 401 and self._pat and attempt == 0:
                self._access = None
                continue
            break
        if r.status_code == 401:
            kind = "Personal Access Token" if self._pat else ("legacy token (is 'legacy tokens' enabled for the "
                                                             "organisation? Organization > Settings > Access Token Settings)")
            raise LabelStudioError(f"Label Studio at {self.url} rejected the {kind} in {TOKEN_ENV} (HTTP 401)")
        if r.status_code >= 400:
            detail = _safe_json(r) or r.text[:300]
            raise LabelStudioError(f"Label Studio {method} {path} failed: HTTP {r.status_code}: {str(detail)[:500]}")
        if not r.content:
            return None
        try:
            return r.json()
        except json.JSONDecodeError:
            raise LabelStudioError(f"Label Studio {method} {path} answered non-JSON (is {self.url} a Label Studio?)") from None

    # -- API -------------------------------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return self.request("GET", "/api/current-user/whoami")

    def projects(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            data = self.request("GET", "/api/projects", params={"page": page, "page_size": 100})
            if isinstance(data, list):  # older servers answer a plain list
                return out + data
            out += data.get("results") or []
            if not data.get("next"):
                return out
            page += 1

    def project(self, project_id: int) -> dict[str, Any] | None:
        try:
            return self.request("GET", f"/api/projects/{int(project_id)}")
        except LabelStudioError as e:
            if "HTTP 404" in str(e):
                return None
            raise

    def create_project(self, title: str, label_config: str, description: str = "") -> dict[str, Any]:
        return self.request("POST", "/api/projects", json={"title": title, "label_config": label_config,
                                                           "description": description})

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/api/projects/{int(project_id)}", json=fields)

    def import_tasks(self, project_id: int, tasks: Iterable[dict[str, Any]]) -> int:
        """Import tasks (``{"data": ..., "predictions": [...]}``) in batches; returns how many were created."""
        batch: list[dict[str, Any]] = []
        n = 0
        for t in tasks:
            batch.append(t)
            if len(batch) >= IMPORT_BATCH:
                n += self._import(project_id, batch)
                batch = []
        if batch:
            n += self._import(project_id, batch)
        return n

    def _import(self, project_id: int, batch: list[dict[str, Any]]) -> int:
        res = self.request("POST", f"/api/projects/{int(project_id)}/import", json=batch) or {}
        return int(res.get("task_count", len(batch)))

    def export(self, project_id: int, *, all_tasks: bool = False) -> list[dict[str, Any]]:
        """Tasks with their annotations (``all_tasks``: also those nobody annotated yet)."""
        params = {"exportType": "JSON", "download_all_tasks": "true" if all_tasks else "false"}
        data = self.request("GET", f"/api/projects/{int(project_id)}/export", params=params)
        return data if isinstance(data, list) else []

    # -- what a person does in the UI (used by tests and scripts) ---------------------------------------------
    def task_ids(self, project_id: int) -> list[int]:
        return [int(t["id"]) for t in self.export(project_id, all_tasks=True)]

    def annotate(self, task_id: int, task: Task, label: str) -> dict[str, Any]:
        """Submit an annotation choosing ``label`` on a task, as the labelling UI does."""
        return self.request("POST", f"/api/tasks/{int(task_id)}/annotations",
                            json={"result": choice_result(task, label), "was_cancelled": False})

    def update_annotation(self, annotation_id: int, task: Task, label: str) -> dict[str, Any]:
        return self.request("PATCH", f"/api/annotations/{int(annotation_id)}", json={"result": choice_result(task, label)})


def _safe_json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except (json.JSONDecodeError, ValueError):
        return None
