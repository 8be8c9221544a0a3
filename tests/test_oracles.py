"""HTTP and HF oracles: every failure mode ends as an error Critique, never as an exception.

The HTTP oracle talks to a real local socket so that timeouts, retries and headers are exercised
through `requests` itself; the HF oracle runs a tiny random Qwen2 built offline in tmp_path.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from alive_exp.domains.base import Critique, Task
from alive_exp.oracles import CritiqueRequest
from alive_exp.oracles.hf import HFOracle
from alive_exp.oracles.http import HTTPOracle

# (status, body bytes, delay seconds) for one incoming request body
Behaviour = Callable[[dict[str, Any]], tuple[int, bytes, float]]


def _reply(content: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


def _echo(body: dict[str, Any]) -> tuple[int, bytes, float]:
    """Default server: critiques the user prompt, 'correct' when it mentions 'good'."""
    prompt = body["messages"][-1]["content"]
    verdict = "correct" if "good" in prompt else "incorrect"
    return 200, _reply(f"Reviewed: {prompt}\nVerdict: {verdict}"), 0.0


class _Server:
    """A scripted chat-completions endpoint: queued behaviours first, then `default`."""

    def __init__(self) -> None:
        self.script: list[Behaviour] = []
        self.default: Behaviour = _echo
        self.seen: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                with outer.lock:
                    outer.seen.append((dict(self.headers), body))
                    behave = outer.script.pop(0) if outer.script else outer.default
                if self.path != "/v1/chat/completions":
                    status, data, delay = 404, b'{"error": "not found"}', 0.0
                else:
                    status, data, delay = behave(body)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up first

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def queue(self, *behaviours: Behaviour) -> None:
        with self.lock:
            self.script.extend(behaviours)


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _req(prompt: str) -> CritiqueRequest:
    task = Task(id="t", domain="toy", prompt="2+2=[MASK]", reference="4")
    return CritiqueRequest(task=task, solution="Answer: 4", prompt=prompt)


def _oracle(server: _Server, **kw: Any) -> HTTPOracle:
    kw.setdefault("backoff_s", 0.01)
    return HTTPOracle(base_url=server.base_url, model="critic-1", **kw)


# -- HTTP oracle ------------------------------------------------------------------------------
def test_http_parses_verdicts_and_keeps_text(server: _Server) -> None:
    oracle = _oracle(server)
    out = oracle.critique([_req("a good solution"), _req("a bad solution")])
    assert [c.verdict for c in out] == [True, False]
    assert out[0].text == "Reviewed: a good solution\nVerdict: correct"
    assert all(c.error is None for c in out)
    assert oracle.stats == {"requests": 2, "retries": 0, "errors": 0}


def test_http_request_body_and_auth_header(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIVE_TEST_KEY", "sk-secret")
    oracle = _oracle(server, api_key_env="ALIVE_TEST_KEY", max_tokens=64, system_prompt="be strict")
    oracle.critique([_req("check this")])
    headers, body = server.seen[-1]
    assert headers["Authorization"] == "Bearer sk-secret"
    assert body["model"] == "critic-1" and body["max_tokens"] == 64 and body["temperature"] == 0.0
    assert body["messages"] == [
        {"role": "system", "content": "be strict"},
        {"role": "user", "content": "check this"},
    ]
    assert "sk-secret" not in repr(oracle)

    monkeypatch.delenv("ALIVE_TEST_KEY")
    _oracle(server, api_key_env="ALIVE_TEST_KEY").critique([_req("again")])
    assert "Authorization" not in server.seen[-1][0]
    _oracle(server, api_key_env=None).critique([_req("again")])
    assert "Authorization" not in server.seen[-1][0]


def test_http_default_system_prompt_asks_for_verdict_line(server: _Server) -> None:
    _oracle(server).critique([_req("x")])
    system = server.seen[-1][1]["messages"][0]["content"]
    assert "Verdict: correct" in system and "Verdict: incorrect" in system and "reference" in system


def test_http_timeout_retries_then_errors(server: _Server) -> None:
    server.default = lambda body: (200, _reply("late\nVerdict: correct"), 1.0)
    oracle = _oracle(server, timeout_s=0.3, max_retries=1)
    t0 = time.monotonic()
    [c] = oracle.critique([_req("slow")])
    assert time.monotonic() - t0 < 3.0
    assert c.verdict is None and c.text == ""
    assert "timed out" in c.error and "2 attempt" in c.error
    assert oracle.stats == {"requests": 1, "retries": 1, "errors": 1}
    assert len(server.seen) == 2


def test_http_malformed_json_is_an_error_not_retried(server: _Server) -> None:
    server.queue(lambda body: (200, b"this is not json", 0.0))
    oracle = _oracle(server)
    [c] = oracle.critique([_req("x")])
    assert c.verdict is None and "malformed JSON" in c.error
    assert oracle.stats["retries"] == 0 and oracle.stats["errors"] == 1


@pytest.mark.parametrize(
    "payload",
    [{"choices": []}, {"choices": [{"message": {}}]}, {"choices": [{"message": {"content": None}}]}, [1, 2]],
)
def test_http_missing_fields_are_errors(server: _Server, payload: Any) -> None:
    server.queue(lambda body: (200, json.dumps(payload).encode(), 0.0))
    [c] = _oracle(server).critique([_req("x")])
    assert c.verdict is None and "content" in c.error


def test_http_500_then_success_is_retried(server: _Server) -> None:
    server.queue(lambda body: (500, b'{"error": "overloaded"}', 0.0), lambda body: (429, b"{}", 0.0))
    oracle = _oracle(server, max_retries=2)
    [c] = oracle.critique([_req("a good one")])
    assert c.verdict is True and c.error is None
    assert oracle.stats == {"requests": 1, "retries": 2, "errors": 0}
    assert len(server.seen) == 3


def test_http_400_is_not_retried(server: _Server) -> None:
    server.queue(lambda body: (400, b'{"error": "bad model name"}', 0.0))
    oracle = _oracle(server, max_retries=3)
    [c] = oracle.critique([_req("x")])
    assert c.verdict is None and "HTTP 400" in c.error and "bad model name" in c.error
    assert oracle.stats == {"requests": 1, "retries": 0, "errors": 1}
    assert len(server.seen) == 1


def test_http_connection_refused_is_an_error() -> None:
    oracle = HTTPOracle(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_s=0.01, timeout_s=1)
    [c] = oracle.critique([_req("x")])
    assert c.verdict is None and "connection error" in c.error
    assert oracle.stats == {"requests": 1, "retries": 1, "errors": 1}


def test_http_reply_without_verdict(server: _Server) -> None:
    server.queue(lambda body: (200, _reply("Looks plausible, I think."), 0.0))
    oracle = _oracle(server)
    [c] = oracle.critique([_req("x")])
    assert c.verdict is None and c.text == "Looks plausible, I think." and "Verdict" in c.error
    assert oracle.stats["errors"] == 0  # the transport worked; the step counts unparsed critiques


def test_http_preserves_order_across_parallel_requests(server: _Server) -> None:
    rng = random.Random(0)
    delays = {f"item {i} {'good' if i % 3 == 0 else 'bad'}": rng.uniform(0.0, 0.05) for i in range(16)}

    def shuffled(body: dict[str, Any]) -> tuple[int, bytes, float]:
        status, data, _ = _echo(body)
        return status, data, delays[body["messages"][-1]["content"]]

    server.default = shuffled
    oracle = _oracle(server, workers=8)
    prompts = list(delays)
    out = oracle.critique([_req(p) for p in prompts])
    assert [c.text.splitlines()[0] for c in out] == [f"Reviewed: {p}" for p in prompts]
    assert [c.verdict for c in out] == ["good" in p for p in prompts]
    assert oracle.critique([]) == []
    oracle.close()


# -- HF oracle --------------------------------------------------------------------------------
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random 2-layer Qwen2 and a byte-level BPE tokenizer, both built and saved offline."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("tiny_critic")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    sentences = [
        "The solution computes 2 + 2 = 5, which is wrong: the sum is 4.",
        "Verdict: correct",
        "Verdict: incorrect",
        "Compare the answer with the reference and explain the mistake.",
    ]
    bpe.train_from_iterator(sentences * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = _CHAT_TEMPLATE
    tok.save_pretrained(path)

    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return str(path)


def test_hf_oracle_returns_one_critique_per_request(tiny_model: str) -> None:
    oracle = HFOracle(model_name_or_path=tiny_model, max_new_tokens=6, batch_size=2)
    prompts = ["Task: 2+2=[MASK]\nReference: 4\nSolution: Answer: 5", "short", "Is 3 right?"]
    out = oracle.critique([_req(p) for p in prompts])
    assert len(out) == 3 and all(isinstance(c, Critique) for c in out)
    for c, p in zip(out, prompts):
        assert isinstance(c.text, str) and p not in c.text  # only the new tokens are decoded
        assert c.verdict in (True, False, None)
        assert (c.verdict is None) == (c.error is not None)
    assert oracle.tokenizer.padding_side == "left"
    assert oracle.critique([]) == []


def test_hf_oracle_uses_chat_template_or_raw_prompt(tiny_model: str) -> None:
    oracle = HFOracle(model_name_or_path=tiny_model, max_new_tokens=2)
    oracle.load()
    assert oracle.render("hi") == "<|user|>hi\n<|assistant|>"
    oracle.tokenizer.chat_template = None
    assert oracle.render("hi") == "hi"
    [c] = oracle.critique([_req("hi")])
    assert isinstance(c, Critique)


def test_hf_oracle_sampling_path(tiny_model: str) -> None:
    import torch

    torch.manual_seed(0)
    out = HFOracle(model_name_or_path=tiny_model, max_new_tokens=3, temperature=0.7).critique([_req("x")] * 2)
    assert len(out) == 2


def test_hf_oracle_missing_model_raises_clear_error(tmp_path) -> None:
    oracle = HFOracle(model_name_or_path=str(tmp_path / "no_such_model"))
    with pytest.raises(RuntimeError, match="oracle=rule") as err:
        oracle.critique([_req("x")])
    assert "no_such_model" in str(err.value)


def test_a_training_run_logs_the_http_oracles_counters(server: _Server, small_cfg) -> None:
    """oracle.kind=http writes the warm-up steps' critiques; each step logs its requests, retries and errors."""
    from mlflow.tracking import MlflowClient

    from alive_exp.train import run

    server.queue(lambda body: (500, b'{"error": "busy"}', 0.0))  # one retry, then the echo server
    cfg = small_cfg("trainer.max_steps=2", "trainer.warmup_steps=1", "oracle.kind=http", f"oracle.base_url={server.base_url}",
                    "oracle.model=critic-1", "oracle.max_retries=2", "trainer.eval_at_end=false", "trainer.checkpoint_every=0")
    out = run(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    history = {k: [m.value for m in client.get_metric_history(out["mlflow_run_id"], f"oracle/{k}")]
               for k in ("requests", "retries", "errors")}
    reviews = len(server.seen) - 1  # the retried request was sent twice
    assert history["requests"][0] == reviews > 0 and history["requests"][1] == 0  # step 1 is past warm-up
    assert history["retries"] == [1.0, 0.0] and history["errors"] == [0.0, 0.0]
