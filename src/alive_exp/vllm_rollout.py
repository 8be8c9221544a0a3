"""Rollout on vLLM (`rollout=vllm`): one served base model, one LoRA adapter per role, synced every step.

The policy is one base model in three roles, so a vLLM server serves the base with every role's LoRA adapter
and each request names its role's adapter (the PEFT adapter active when the step generates). The step does
not change: `VLLMGenerator` is a `rollout.Generator` whose `generate` sends token ids to the server and
gets token ids and their log-probs back (never re-tokenised text). After every optimizer step the module
marks the role's adapter stale (`generator.merged.stale(adapter)`, the signal that re-merges the HF
path's generation copy); here that saves the adapter and reloads it in place on the server, so what the
server samples from after step k is what was trained through step k.

On-policy, checked: the server runs with `--generation-config vllm` (none of the model folder's sampling
defaults) and `--logprobs-mode processed_logprobs` (log-probs of the distribution it sampled from, after
temperature); every request sets every sampling knob (temperature, top_p 1, top_k off, no penalties, min_p
0). The learner compares its log-probs with the server's (`rollout/logprob_gap_mean|max`, every step) and
the run stops with an error naming both when the mean exceeds `rollout.max_logprob_gap`.

The server lives in its own environment (`bash scripts/setup_vllm.sh` makes `.venv-vllm`; vLLM pins its own
torch and transformers), started by the run (`rollout.vllm.url: null`) or attached to by URL. A started
server is health-checked before the first step and stopped when the run ends (also on an error or exit);
a server that dies or stops answering is an error naming it and the last lines of its log, not a hang.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alive_exp.rollout import Completion, Generator

log = logging.getLogger(__name__)

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's --max-lora-rank accepts
BASE = "base"  # the served name of the base model (requests with no active adapter)


class VLLMServerError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """A vLLM OpenAI-compatible server: started here (`start`) or attached to (`attach`)."""

    def __init__(self, url: str, process: subprocess.Popen | None = None, log_path: Path | None = None,
                 request_timeout_s: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.process = process
        self.log_path = log_path
        self.request_timeout_s = request_timeout_s

    # -- lifetime ---------------------------------------------------------------------------------
    @classmethod
    def start(cls, *, python: str, model: str, max_lora_rank: int, max_loras: int, dtype: str, seed: int,
              max_model_len: int, log_dir: Path, extra_args: list[str], env: dict[str, str],
              startup_timeout_s: float, request_timeout_s: float) -> VLLMServer:
        if not Path(python).exists():
            raise VLLMServerError(f"rollout.vllm.python={python} does not exist: make vLLM's environment with "
                                  "`bash scripts/setup_vllm.sh` (or point rollout.vllm.python at one, or attach to a "
                                  "running server with rollout.vllm.url=http://host:port)")
        port = _free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / "vllm_server.log"
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
               "--model", model, "--served-model-name", BASE, "--dtype", dtype, "--seed", str(seed),
               "--max-model-len", str(max_model_len), "--enable-lora", "--max-lora-rank", str(max_lora_rank),
               "--max-loras", str(max_loras), "--generation-config", "vllm", "--logprobs-mode", "processed_logprobs",
               *extra_args]
        full_env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", **{str(k): str(v) for k, v in env.items()}}
        full_env.pop("PYTHONPATH", None)  # vLLM's own environment, not ours
        with open(log_path, "ab") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        server = cls(f"http://127.0.0.1:{port}", process, log_path, request_timeout_s)
        atexit.register(server.stop)
        log.info("vLLM: starting %s (log %s)", " ".join(cmd), log_path)
        try:
            server.wait_healthy(startup_timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    @classmethod
    def attach(cls, url: str, request_timeout_s: float, startup_timeout_s: float = 30.0) -> VLLMServer:
        server = cls(url, request_timeout_s=request_timeout_s)
        server.wait_healthy(startup_timeout_s)
        return server

    def wait_healthy(self, timeout_s: float) -> None:
        start = time.monotonic()
        deadline, told = start + timeout_s, start
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        log.info("vLLM: server healthy at %s", self.url)
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            now = time.monotonic()
            if now > deadline:
                raise VLLMServerError(f"vLLM server at {self.url} not healthy after {timeout_s:.0f} s"
                                      f"{self._log_tail()}")
            if now - told >= 30:
                told = now
                log.info("vLLM: waiting for %s to answer /health (%.0f of %.0f s)", self.url, now - start, timeout_s)
            time.sleep(1.0)

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise VLLMServerError(f"vLLM server at {self.url} exited with code {self.process.returncode}"
                                  f"{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"; last lines of {self.log_path}:\n" + "\n".join(tail)

    def stop(self) -> None:
        """Stop a server this run started (its whole process group: vLLM's engine runs in a child)."""
        p = self.process
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        except ProcessLookupError:
            pass
        try:  # children that outlived the leader
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.info("vLLM: server at %s stopped", self.url)

    # -- requests ---------------------------------------------------------------------------------
    def post(self, path: str, body: dict[str, Any], retries: int = 2) -> Any:
        data = json.dumps(body).encode()
        for attempt in range(retries + 1):
            self._check_alive()
            req = urllib.request.Request(f"{self.url}{path}", data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.request_timeout_s) as r:
                    text = r.read().decode()
                    return json.loads(text) if text.strip().startswith(("{", "[")) else text
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:2000]
                if exc.code < 500 or attempt == retries:
                    raise VLLMServerError(f"vLLM server at {self.url}{path}: HTTP {exc.code}: {detail}") from exc
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                if attempt == retries:
                    raise VLLMServerError(f"vLLM server at {self.url} is not answering ({exc}){self._log_tail()}") from exc
            time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")

    def load_adapter(self, name: str, path: Path, inplace: bool) -> None:
        self.post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path), "load_inplace": inplace})


class AdapterSync:
    """Keeps the server's adapters equal to the trained ones: `stale(adapter)` (called after the adapter's
    optimizer step) saves it and reloads it in place. Takes the place of `models.MergedView` for the HF path."""

    def __init__(self, peft_model, server: VLLMServer, folder: Path, adapters: list[str]) -> None:
        self.peft_model, self.server, self.folder = peft_model, server, folder
        self.adapters = list(adapters)
        self.loaded: set[str] = set()
        self.syncs = 0
        self.sync_s = 0.0
        for name in self.adapters:
            self._push(name)

    def _push(self, name: str) -> None:
        start = time.perf_counter()
        out = self.folder / name
        tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".{name}-"))
        self.peft_model.save_pretrained(tmp, selected_adapters=[name])
        saved = next(p.parent for p in tmp.rglob("adapter_config.json"))
        if out.exists():
            shutil.rmtree(out)
        saved.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        self.server.load_adapter(name, out, inplace=name in self.loaded)
        self.loaded.add(name)
        self.syncs += 1
        self.sync_s += time.perf_counter() - start

    def stale(self, adapter: str | None = None) -> None:
        for name in ([adapter] if adapter else self.adapters):
            self._push(name)


class VLLMGenerator(Generator):
    """`rollout.Generator` on a vLLM server: same prompts, ids, stop tokens and `Completion`s; the role's
    adapter is the PEFT model's active one; per-request seeds derive from the phase seed."""

    def __init__(self, model, tokenizer, server: VLLMServer, *, chat: bool = True, batch_size: int = 64,
                 concurrency: int = 64) -> None:
        super().__init__(model, tokenizer, batch_size=batch_size, chat=chat)
        self.server = server
        self.concurrency = concurrency
        self.merged: AdapterSync | None = None

    def _served_name(self) -> str:
        return getattr(self.model, "active_adapter", None) or BASE

    def generate(self, prompts: list[str], *, n: int = 1, max_new_tokens: int = 64, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None, on_batch=None) -> list[list[Completion]]:
        if not prompts:
            return []
        if temperature > 0 and top_p < 1.0:
            raise ValueError("top_p < 1 samples from a distribution the learner does not score; use top_p=1")
        name = self._served_name()
        ids = [self.encode_prompt(p) for p in prompts]

        greedy = temperature <= 0

        def one(i: int) -> list[Completion]:
            # greedy: one completion per prompt, repeated n times (vLLM refuses n > 1 without sampling)
            body = {"model": name, "prompt": ids[i], "n": 1 if greedy else n, "max_tokens": max_new_tokens,
                    "temperature": float(temperature), "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                    "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                    "stop_token_ids": self.eos_ids, "skip_special_tokens": True, "return_token_ids": True,
                    "logprobs": None if greedy else 0}
            if seed is not None:
                body["seed"] = int((seed * 1_000_003 + i) % (2**31 - 1))
            out = self.server.post("/v1/completions", body)
            choices = sorted(out["choices"], key=lambda c: c["index"])
            done = [self._completion(prompts[i], ids[i], c, not greedy) for c in choices]
            if greedy:
                done = done * n
            if on_batch is not None:
                on_batch(n)
            return done

        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            return list(pool.map(one, range(len(prompts))))

    def _completion(self, prompt: str, prompt_ids: list[int], choice: dict, sampled: bool) -> Completion:
        toks = list(choice.get("token_ids") or [])
        logps = [float(x) for x in choice["logprobs"]["token_logprobs"]] if sampled and choice.get("logprobs") else None
        cut = next((j for j, t in enumerate(toks) if t in self.eos_ids), None)
        if cut is None and choice.get("finish_reason") == "stop" and isinstance(choice.get("stop_reason"), int):
            toks.append(int(choice["stop_reason"]))  # vLLM left the stop token out: targets end in it,
            cut, logps = len(toks) - 1, None         # but its log-prob is unknown: no gap check on this sample
        kept = toks[: cut + 1] if cut is not None else toks
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        if logps is not None and len(logps) < len(kept):
            logps = None
        return Completion(prompt, text, prompt_ids, kept, truncated=cut is None,
                          sampler_logps=logps[:len(kept)] if logps is not None else None)

    def close(self) -> None:
        self.server.stop()

    def pop_metrics(self) -> dict[str, float]:
        sync = self.merged
        if sync is None:
            return {}
        out = {"rollout/sync_s": sync.sync_s, "rollout/syncs": float(sync.syncs)}
        sync.sync_s, sync.syncs = 0.0, 0
        return out


def check_config(cfg) -> None:
    """What `rollout=vllm` refuses at start-up."""
    v = cfg.rollout.vllm
    if cfg.model.finetune == "full":
        raise ValueError("rollout=vllm serves one base model with LoRA adapters; model.finetune=full changes the base "
                         "every step, which the server cannot follow: use model.finetune=lora or rollout=hf")
    if int(v.max_lora_rank) not in MAX_LORA_RANKS:
        raise ValueError(f"rollout.vllm.max_lora_rank={v.max_lora_rank}: vLLM accepts {list(MAX_LORA_RANKS)}")
    if int(cfg.model.lora.r) > int(v.max_lora_rank):
        raise ValueError(f"model.lora.r={cfg.model.lora.r} is above the server's rollout.vllm.max_lora_rank="
                         f"{v.max_lora_rank}: raise it (one of {list(MAX_LORA_RANKS)}) or lower the rank")
    if cfg.hardware.devices > 1 or cfg.hardware.num_nodes > 1:
        raise ValueError("rollout=vllm with hardware.devices > 1: run the server on its own devices and attach to it "
                         "(rollout.vllm.url); every rank would otherwise start one (docs/scale.md)")


def build_generator(cfg, model, tokenizer, base_path: str, adapters: list[str], run_dir: Path) -> VLLMGenerator:
    """Start (or attach to) the server on `base_path` and load every role's adapter."""
    v = cfg.rollout.vllm
    if v.url:
        server = VLLMServer.attach(str(v.url), float(v.request_timeout_s), float(v.startup_timeout_s))
    else:
        dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "auto": "auto"}[cfg.model.dtype]
        max_len = int(v.max_model_len or getattr(model.config, "max_position_embeddings", 2048))
        server = VLLMServer.start(python=str(v.python), model=base_path, max_lora_rank=int(v.max_lora_rank),
                                  max_loras=max(len(adapters), 1), dtype=dtype, seed=int(cfg.seed), max_model_len=max_len,
                                  log_dir=run_dir, extra_args=[str(a) for a in v.extra_args], env=dict(v.env),
                                  startup_timeout_s=float(v.startup_timeout_s),
                                  request_timeout_s=float(v.request_timeout_s))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "vllm_server.json").write_text(json.dumps(  # which server served this run
        {"url": server.url, "pid": server.process.pid if server.process else None, "base": base_path,
         "started_here": server.process is not None, "log": str(server.log_path) if server.log_path else None}))
    gen = VLLMGenerator(model, tokenizer, server, chat=cfg.model.chat, batch_size=cfg.trainer.generation.batch_size,
                        concurrency=int(v.concurrency))
    folder = run_dir / "vllm_adapters"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        gen.merged = AdapterSync(model, server, folder, adapters)
    except BaseException:
        server.stop()
        raise
    return gen
