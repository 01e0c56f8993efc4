"""Helpers for fault-tolerance tests (the names the Fault Injection API's user guide uses)."""
from __future__ import annotations

import os
from typing import Any, Dict

import httpx


class Colors:
    """ANSI colours for terminal output."""

    GREEN = "\033[92m"
    RED = "\033[91m"
    YELLOW = "\033[93m"
    BLUE = "\033[94m"
    BOLD = "\033[1m"
    RESET = "\033[0m"


def get_config_from_env() -> Dict[str, str]:
    """`api_url`, `frontend_url`, `app_namespace` from API_URL, FRONTEND_URL, APP_NAMESPACE."""
    return {
        "api_url": os.environ.get("API_URL", "http://localhost:8080"),
        "frontend_url": os.environ.get("FRONTEND_URL", "http://localhost:8000"),
        "app_namespace": os.environ.get("APP_NAMESPACE", "dynamo"),
    }


def check_frontend_reachable(frontend_url: str | None = None, timeout: float = 5.0) -> bool:
    """Whether the frontend answers `GET /health` with a 2xx."""
    url = frontend_url or get_config_from_env()["frontend_url"]
    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).is_success
    except httpx.HTTPError:
        return False


def send_completion_request(prompt: str, max_tokens: int = 16, frontend_url: str | None = None,
                            model: str | None = None, timeout: float = 60.0) -> httpx.Response:
    """POSTs an OpenAI-style completion request to the frontend (`/v1/completions`)."""
    url = frontend_url or get_config_from_env()["frontend_url"]
    body: Dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens}
    if model:
        body["model"] = model
    return httpx.post(f"{url.rstrip('/')}/v1/completions", json=body, timeout=timeout)


def validate_completion_response(response: httpx.Response) -> str:
    """The completion text of a successful response; raises AssertionError otherwise."""
    assert response.status_code == 200, f"HTTP {response.status_code}: {response.text[:200]}"
    data = response.json()
    choices = data.get("choices") or []
    assert choices, f"no choices in {data}"
    text = choices[0].get("text")
    assert isinstance(text, str), f"no text in {choices[0]}"
    return text
