"""CodeI/O documents for the code domain: reasoning-gym's programs, each with one drawn input and its output.

A document is a program from reasoning-gym's pool with one input drawn by the program's own generator
and the output it gives, both computed in the sandbox (the programs write files and start threads;
they never run in-process):

    <what the program computes>
    <input and output specification>
    <code defining main_solution>
    Input: {"n": 3}
    Output: 6

Programs are split by a hash of their code, so no held-out program is ever trained on, whatever the
input drawn; held-out inputs come from a seed stream of their own.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import random
import re
from functools import lru_cache
from typing import Any

from alive_exp import sandbox
from alive_exp.domains.base import Document

log = logging.getLogger(__name__)

_TEST_STREAM = 1_000_000_007  # CodeI/O draws held-out inputs from a stream of their own
# CodeI/O programs that exit, fork, start threads or touch files would end or spoil a whole sandbox batch
_HAZARD = re.compile(r"\b(?:import|from)\s+(?:threading|multiprocessing|subprocess|asyncio|signal|socket|concurrent)\b"
                     r"|\b(?:exit|quit|input|open)\s*\(|\bos\.(?:system|_exit|kill|fork|remove|unlink)\b")

# Draws CodeI/O pairs in one sandboxed process per batch: each job is (program + input generator, seed); a job
# that fails, runs over 2 s of CPU or gives a value over 200 characters yields no line.
_PAIRS = """
import json, os, random, signal
out = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the programs' own prints go nowhere


def _too_slow(*_):
    raise TimeoutError


signal.signal(signal.SIGVTALRM, _too_slow)
for key, (code, seed) in enumerate(JOBS):
    try:
        signal.setitimer(signal.ITIMER_VIRTUAL, 2.0)
        ns = {"Random": random.Random, "__name__": "codeio"}
        exec(code, ns)
        given = ns["generate_inputs"](random.Random(seed))
        pair = [key, json.dumps(given), json.dumps(ns["main_solution"](**given))]
    except BaseException:
        continue
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
    if isinstance(given, dict) and given and max(len(pair[1]), len(pair[2])) <= 200:
        out.write(json.dumps(pair) + "\\n")
        out.flush()
"""
_PAIR_CACHE: dict[tuple[str, int], tuple[str, str] | None] = {}


@lru_cache(maxsize=1)
def programs() -> tuple[dict[str, Any], ...]:
    """reasoning-gym's CodeI/O pool: description, input/output spec, code, input generator per program."""
    from reasoning_gym.data import get_data_file_path

    with gzip.open(get_data_file_path("codeio.jsonl.gz"), "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


@lru_cache(maxsize=1)
def scorer():
    """reasoning-gym's CodeI/O dataset, for its `score_answer`."""
    import reasoning_gym as rg

    return rg.create_dataset("codeio", seed=0, size=1)


def pairs(jobs: list[tuple[str, int]], batch: int = 100) -> list[tuple[str, str] | None]:
    """(input JSON, output JSON) per (program, seed), run in the sandbox in parallel batches; None if it failed."""
    todo = list(dict.fromkeys(j for j in jobs if j not in _PAIR_CACHE))
    chunks = [todo[i:i + batch] for i in range(0, len(todo), batch)]
    scripts = [f"JOBS = {chunk!r}\n{_PAIRS}" for chunk in chunks]
    results = sandbox.run_many(scripts, timeout_s=300, memory_mb=2048) if scripts else []
    for chunk, result in zip(chunks, results):
        found: dict[int, tuple[str, str]] = {}
        for line in result.stdout.splitlines():
            with contextlib.suppress(ValueError, TypeError):
                key, given, output = json.loads(line)
                found[key] = (given, output)
        _PAIR_CACHE.update({job: found.get(k) for k, job in enumerate(chunk)})
    return [_PAIR_CACHE[j] for j in jobs]


def is_heldout(code: str, split_seed: int, heldout_share: float) -> bool:
    digest = hashlib.sha1(f"{split_seed}:{code}".encode()).hexdigest()
    return int(digest[:8], 16) / 16**8 < heldout_share


def documents(split: str, n: int, seed: int, *, split_seed: int, heldout_share: float, max_doc_chars: int,
              domain: str) -> list[Document]:
    """n documents of the split's programs, each with an input drawn by (stream, draw number)."""
    code = lambda p: p["code_sample"].strip()  # noqa: E731
    pool = [p for p in programs() if is_heldout(code(p), split_seed, heldout_share) == (split == "test")
            and len(p["task_description"] + p["input_output_spec"] + code(p)) + 40 <= max_doc_chars
            and not _HAZARD.search(p["code_sample"] + p["input_generator"])]
    stream = seed if split == "train" else _TEST_STREAM  # held-out: the same documents for every run seed
    docs: list[Document] = []
    seen: set[str] = set()
    drawn = 0
    while len(docs) < n and drawn < 4 * n + 100:
        rngs = [random.Random(f"codeio:{stream}:{i}") for i in range(drawn, drawn + n - len(docs) + 8)]
        draws = [(drawn + k, rng.choice(pool), rng.getrandbits(32)) for k, rng in enumerate(rngs)]
        drawn += len(draws)
        found = pairs([(p["code_sample"] + "\n\n" + p["input_generator"], s) for _, p, s in draws])
        for (i, program, _), pair in zip(draws, found):
            doc = document(program, *pair, doc_id=f"codeio-{stream}-{i}", max_doc_chars=max_doc_chars,
                           domain=domain) if pair else None
            if doc and doc.text not in seen and len(docs) < n:
                seen.add(doc.text)
                docs.append(doc)
    if len(docs) < n:
        log.warning("code/codeio: only %d of %d %s documents within %d draws", len(docs), n, split, drawn)
    return docs


def document(program: dict[str, Any], given: str, output: str, doc_id: str, *, max_doc_chars: int,
             domain: str) -> Document | None:
    """The program's text with its input and output lines; None when it is too long for a prompt."""
    about, spec, code = (program[k].strip() for k in ("task_description", "input_output_spec", "code_sample"))
    text = f"{about}\n\n{spec}\n\n{code}\n\nInput: {given}\nOutput: {output}"
    if len(text) > max_doc_chars:
        return None
    at = len(text) - len(output) - len("\nOutput: ") - len(given)
    return Document(
        id=doc_id, text=text, domain=domain,
        meta={"source": "codeio", "code": code, "input_span": (at, at + len(given)),
              "output_span": (len(text) - len(output), len(text))},
    )
