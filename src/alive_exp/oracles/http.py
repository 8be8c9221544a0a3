"""An OpenAI-compatible chat-completions endpoint as the critic (vLLM, SGLang, llama.cpp, hosted APIs).

A remote critic is only useful when one flaky request cannot stall or crash a training step, so
every failure - timeout, refused connection, rate limit, server error, malformed reply - ends as a
`Critique` with `error` set after a bounded number of retries. The API key is read from an
environment variable (never from config files) and is never logged or shown in `repr`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from alive_exp.domains.base import Critique
from alive_exp.oracles import CritiqueRequest
from alive_exp.roles import parse_critique

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful reviewer. You are given a task, its reference answer and a candidate "
    "solution. Compare the solution against the reference and explain in words what is wrong "
    "with it (or why it is right): point to the exact step or value that fails and say what it "
    "should be. Do not just restate the reference. End your reply with exactly one final line, "
    "either `Verdict: correct` or `Verdict: incorrect`."
)

#: longest wait honoured from a server's Retry-After header, so one reply cannot stall a step
_MAX_RETRY_AFTER_S = 30.0
#: how much of an error response body is kept in the Critique's error message
_BODY_SNIPPET = 200


class _Retryable(Exception):
    """A failure worth another attempt (timeout, connection error, 429, 5xx)."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


class _Fatal(Exception):
    """A failure that another attempt would repeat (4xx, malformed reply)."""


class HTTPOracle:
    """Critiques via `POST {base_url}/chat/completions`, parallel over a thread pool.

    `stats` counts requests (one per critique), retries (extra attempts) and errors (critiques that
    came back without usable text), so the step can log how reliable the endpoint is.
    """

    name = "http"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        temperature: float = 0.0,
        max_tokens: int = 512,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        workers: int = 4,
    ) -> None:
        if not base_url:
            raise ValueError("HTTPOracle needs a base_url, e.g. http://127.0.0.1:8000/v1")
        if max_retries < 0 or workers < 1 or timeout_s <= 0:
            raise ValueError("HTTPOracle needs max_retries >= 0, workers >= 1 and timeout_s > 0")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.system_prompt = system_prompt
        self.workers = int(workers)
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "errors": 0}
        self._stats_lock = threading.Lock()
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        # an unset or empty variable means "no auth header": local servers usually need none
        self._api_key = (os.environ.get(api_key_env) or None) if api_key_env else None

    def __repr__(self) -> str:
        auth = "set" if self._api_key else "none"
        return f"HTTPOracle(url={self.url!r}, model={self.model!r}, key={auth})"

    # -- public -------------------------------------------------------------------------------
    def critique(self, requests: list[CritiqueRequest]) -> list[Critique]:
        """One Critique per request, in order; never raises on endpoint failures."""
        if not requests:
            return []
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="http-oracle")
        # map keeps input order however the replies arrive
        return list(self._pool.map(self._critique_one, requests))

    def close(self) -> None:
        """Stop the worker threads; a later `critique` starts a fresh pool."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- internals ----------------------------------------------------------------------------
    def _bump(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _session(self) -> requests.Session:
        # requests.Session is not thread-safe; one per worker keeps connections alive safely
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            self._local.session = s
        return s

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _payload(self, prompt: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": prompt},
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _critique_one(self, req: CritiqueRequest) -> Critique:
        self._bump("requests")
        payload = self._payload(req.prompt)
        reason = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._bump("retries")
            try:
                return parse_critique(self._post(payload))
            except _Fatal as e:
                reason = str(e)
                break
            except _Retryable as e:
                reason = str(e)
                if attempt < self.max_retries:
                    wait = self.backoff_s * (2**attempt)
                    if e.wait_s is not None:
                        wait = max(wait, e.wait_s)
                    time.sleep(wait)
        else:
            reason = f"gave up after {self.max_retries + 1} attempt(s): {reason}"
        self._bump("errors")
        log.warning("http oracle %s: %s", self.url, reason)
        return Critique(text="", verdict=None, error=f"http oracle: {reason}")

    def _post(self, payload: dict[str, Any]) -> str:
        """One attempt: the reply's message content, or `_Retryable` / `_Fatal` with a reason."""
        try:
            resp = self._session().post(self.url, json=payload, headers=self._headers(), timeout=self.timeout_s)
        except requests.Timeout:
            raise _Retryable(f"timed out after {self.timeout_s:g}s") from None
        except requests.ConnectionError as e:
            raise _Retryable(f"connection error: {type(e).__name__}") from None
        except requests.RequestException as e:
            raise _Fatal(f"request failed: {type(e).__name__}: {e}") from None

        status = resp.status_code
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}: {_snippet(resp.text)}", _retry_after(resp))
        if status >= 400:
            raise _Fatal(f"HTTP {status} (not retried): {_snippet(resp.text)}")

        try:
            body = resp.json()
        except (ValueError, json.JSONDecodeError):
            raise _Fatal(f"malformed JSON in reply: {_snippet(resp.text)!r}") from None
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Fatal(f"reply lacks choices[0].message.content: {_snippet(json.dumps(body))}") from None
        if not isinstance(content, str):
            raise _Fatal(f"choices[0].message.content is {type(content).__name__}, not text")
        return content


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_SNIPPET else text[:_BODY_SNIPPET] + "..."


def _retry_after(resp: requests.Response) -> float | None:
    """Seconds from a numeric Retry-After header, capped; None when absent or a date."""
    value = resp.headers.get("Retry-After")
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER_S) if value is not None else None
    except ValueError:
        return None
