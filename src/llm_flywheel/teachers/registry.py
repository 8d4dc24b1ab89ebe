"""Teacher specs: one short string picks the provider, model and API-key variable.

    openrouter:google/gemini-2.5-flash     https://openrouter.ai/api/v1, key in $OPENROUTER_API_KEY
    openai:gpt-4o-mini                     https://api.openai.com/v1, $OPENAI_API_KEY
    gemini:gemini-2.5-flash                Google's OpenAI-compatible endpoint, $GEMINI_API_KEY
    azure:DEPLOYMENT                       Azure OpenAI's v1 API at $AZURE_OPENAI_ENDPOINT, $AZURE_OPENAI_API_KEY
    anthropic:claude-haiku-4-5             https://api.anthropic.com/v1, $ANTHROPIC_API_KEY (also mistral:, groq:,
                                           together:, deepseek:, fireworks: -- each with its $NAME_API_KEY)
    ollama:llama3.2-vision                 http://127.0.0.1:11434/v1, no key
    vllm:MODEL / llamacpp:MODEL / lmstudio:MODEL   local servers, no key
    http://host:port/v1|MODEL              any OpenAI-compatible base URL (the simulated teacher too)
    http://host:port/v1                    same, model taken from the server's /models

Why strings: the same spec goes on the command line, in a config file and in a report, and says exactly which
teacher produced a label.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

from llm_flywheel.core.task import Task
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher, TeacherConfigError, classify_transport_error, fatal_fix

PROVIDERS: dict[str, tuple[str, str | None]] = {
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "gemini": ("https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
    "ollama": ("http://127.0.0.1:11434/v1", None),
    "vllm": ("http://127.0.0.1:8000/v1", None),
    "llamacpp": ("http://127.0.0.1:8080/v1", None),
    "lmstudio": ("http://127.0.0.1:1234/v1", None),
    "azure": ("", "AZURE_OPENAI_API_KEY"),  # the resource's endpoint from $AZURE_OPENAI_ENDPOINT (see parse_spec)
    # hosted APIs with an OpenAI-compatible endpoint (what each ignores or refuses is negotiated like any server's)
    "anthropic": ("https://api.anthropic.com/v1", "ANTHROPIC_API_KEY"),
    "mistral": ("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "groq": ("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "together": ("https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "deepseek": ("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "fireworks": ("https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
}
AZURE_ENDPOINT_ENV = "AZURE_OPENAI_ENDPOINT"
LOCAL_BASE_ENV = {"ollama": "OLLAMA_BASE_URL", "vllm": "VLLM_BASE_URL", "llamacpp": "LLAMACPP_BASE_URL"}


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``spec`` -> (base_url, model or None, default key env).  Raises ``TeacherConfigError`` with the forms."""
    spec = (spec or "").strip()
    if spec.startswith(("http://", "https://")):
        base, _, model = spec.partition("|")
        return base.rstrip("/"), (model.strip() or None), None
    provider, sep, model = spec.partition(":")
    provider = provider.lower()
    if not sep or provider not in PROVIDERS or not model.strip():
        raise TeacherConfigError(
            f"cannot read teacher spec {spec!r}; use PROVIDER:MODEL with PROVIDER one of "
            f"{', '.join(PROVIDERS)} (e.g. openrouter:google/gemini-2.5-flash), or BASE_URL|MODEL "
            f"(e.g. http://127.0.0.1:8111/v1|simulated/fashion-mnist-teacher)"
        )
    base, key_env = PROVIDERS[provider]
    if provider in LOCAL_BASE_ENV and os.environ.get(LOCAL_BASE_ENV[provider]):
        base = os.environ[LOCAL_BASE_ENV[provider]].rstrip("/")
    if provider == "azure":
        base = _azure_base(os.environ.get(AZURE_ENDPOINT_ENV, ""))
    return base, model.strip(), key_env


def _azure_base(endpoint: str) -> str:
    """Azure OpenAI's v1 API (no api-version; the OpenAI client's own requests, key as a Bearer token) under the
    resource's endpoint, e.g. https://NAME.openai.azure.com -> https://NAME.openai.azure.com/openai/v1."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint.startswith(("https://", "http://")):
        raise TeacherConfigError(f"azure:DEPLOYMENT needs ${AZURE_ENDPOINT_ENV}, the resource's endpoint (e.g. "
                                 "https://NAME.openai.azure.com); export it")
    for tail in ("/openai/v1", "/openai"):
        if endpoint.endswith(tail):
            endpoint = endpoint[: -len(tail)]
    return endpoint + "/openai/v1"


def discover_model(base_url: str, api_key_env: str | None = None, timeout: float = 10.0) -> str:
    """The first model a server lists at ``/models`` (for specs given as a bare URL).  Raises
    ``TeacherConfigError`` naming the URL and the fix (nothing listens there, the host does not resolve, the key
    was refused, nothing is listed)."""
    headers = {}
    if api_key_env and os.environ.get(api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[api_key_env]}"
    try:
        r = httpx.get(f"{base_url}/models", headers=headers, timeout=timeout)
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise TeacherConfigError(fatal_fix(classify_transport_error(e), base_url)) from None
    except httpx.HTTPError as e:
        raise TeacherConfigError(f"{base_url}/models did not answer ({type(e).__name__}); use BASE_URL|MODEL") from None
    if r.status_code in (401, 402, 403):
        raise TeacherConfigError(fatal_fix("auth", base_url, r.status_code, api_key_env))
    try:
        r.raise_for_status()
        data = r.json().get("data") or []
        return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise TeacherConfigError(
            f"no model given and {base_url}/models did not list one ({type(e).__name__}); use BASE_URL|MODEL"
        ) from None


EXTRA_BODY_ENV = "FLYWHEEL_TEACHER_EXTRA_BODY"


def extra_body_from_env(environ: Any = None) -> dict[str, Any]:
    """Request fields every teacher call adds, from ``$FLYWHEEL_TEACHER_EXTRA_BODY`` (a JSON object, e.g.
    ``{"reasoning_effort": "low"}``): a provider's own knobs on the command line, in ``flywheel serve`` and on Ray
    workers (``FLYWHEEL_*`` travel there) without a flag on every command.  Raises ``TeacherConfigError``."""
    raw = (os.environ if environ is None else environ).get(EXTRA_BODY_ENV, "").strip()
    if not raw:
        return {}
    try:
        extra = json.loads(raw)
    except ValueError as e:
        raise TeacherConfigError(f"${EXTRA_BODY_ENV} is not JSON ({e}); give an object such as "
                                 '\'{"reasoning_effort": "low"}\'') from None
    if not isinstance(extra, dict) or {"model", "messages"} & set(extra):
        raise TeacherConfigError(f"${EXTRA_BODY_ENV} must be a JSON object of extra request fields (not model or "
                                 'messages), such as \'{"reasoning_effort": "low"}\'')
    return extra


def teacher_from_spec(spec: str, task: Task, *, api_key_env: str | None = None, **options: Any) -> OpenAICompatTeacher:
    """Build the teacher a spec names.  ``api_key_env`` overrides the provider's default variable name; request
    fields in ``$FLYWHEEL_TEACHER_EXTRA_BODY`` are added under any ``extra_body`` given."""
    env_extra = extra_body_from_env()
    if env_extra:
        options["extra_body"] = {**env_extra, **(options.get("extra_body") or {})}
    base, model, key_env = parse_spec(spec)
    if api_key_env is not None:
        key_env = api_key_env or None
    if model is None:
        model = discover_model(base, key_env)
    return OpenAICompatTeacher(base, model, api_key_env=key_env, task=task, **options)
