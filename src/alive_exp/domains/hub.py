"""Benchmarks that live on the Hugging Face hub (GSM8K, MATH-500, MBPP), loaded with `datasets` and cached.

Offline, or without `datasets`, loading fails with a message naming the benchmark and the offline
suites to use instead; nothing here is needed for the default, fully offline configs.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from typing import TYPE_CHECKING, Any

from alive_exp.domains.base import Document, Task

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from alive_exp.domains.base import Domain

#: benchmark name -> (dataset id, config, split)
HUB_DATASETS: dict[str, tuple[str, str | None, str]] = {
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "mbpp": ("google-research-datasets/mbpp", "sanitized", "test"),
}


class HubUnavailable(RuntimeError):
    pass


def load_rows(name: str, size: int, seed: int) -> list[dict[str, Any]]:
    """Up to `size` rows of a hub benchmark, shuffled with `seed` (the whole set when size <= 0)."""
    if name not in HUB_DATASETS:
        raise KeyError(f"unknown hub benchmark {name!r}; known: {', '.join(HUB_DATASETS)}")
    repo, config, split = HUB_DATASETS[name]
    try:
        import datasets
    except ImportError as exc:
        raise HubUnavailable(f"benchmark {name!r} needs the `datasets` package: pip install 'alive-exp[hub]'") from exc
    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:
        raise HubUnavailable(
            f"could not load benchmark {name!r} ({repo}) from the hub or its cache: {exc}. "
            "Offline, use the offline suites (math_heldout, humaneval, logic_heldout) or run once with hub access."
        ) from exc
    ds = ds.shuffle(seed=seed)
    n = len(ds) if size <= 0 else min(size, len(ds))
    return [ds[i] for i in range(n)]


def corpus_rows(path: str, *, name: str | None = None, split: str = "train",
                data_files: str | list[str] | None = None) -> Any:
    """A raw training corpus through `datasets`: a hub dataset id (e.g. SynthLabsAI/Big-Math-RL-Verified) or a
    local builder such as "json" with `data_files` (how the tests load a file of the same schema)."""
    try:
        import datasets
    except ImportError as exc:
        raise HubUnavailable(f"corpus {path!r} needs the `datasets` package: pip install 'alive-exp[hub]'") from exc
    try:
        return datasets.load_dataset(path, name, split=split, data_files=data_files)
    except Exception as exc:
        raise HubUnavailable(f"could not load corpus {path!r} (split {split!r}) from the hub, its cache or "
                             f"data_files: {exc}") from exc


def corpus_documents(opts: dict[str, Any], known: set[str], n: int, seed: int, split: str,
                     domain: Domain) -> list[Document]:
    """Documents of a raw corpus (`benchmark.options.source_options.hub_corpus`): each row rendered by the
    template, held out iff its first line hashes into heldout_share (the same problems for every seed),
    training ones in a seeded order."""
    unknown = set(opts) - known
    if unknown or not opts.get("path"):
        raise ValueError(f"benchmark.options.source_options.hub_corpus needs path (a dataset id, or 'json' with "
                         f"data_files); unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    rows = corpus_rows(opts["path"], name=opts["name"], split=opts["split"], data_files=opts["data_files"])
    order = list(range(len(rows)))
    random.Random(seed if split == "train" else 0).shuffle(order)
    docs: list[Document] = []
    for i in order:
        try:
            text = opts["template"].format(**rows[i]).strip()
        except KeyError as exc:
            raise ValueError(f"hub_corpus template {opts['template']!r} names column {exc}, which {opts['path']} "
                             f"lacks (columns: {sorted(rows.column_names)})") from None
        held = int(hashlib.sha1(text.splitlines()[0].encode()).hexdigest()[:8], 16) / 16**8 < opts["heldout_share"]
        if held == (split == "test") and domain.answer_prefix in text:
            docs.append(Document(id=f"corpus-{i}", text=text, domain=domain.name, meta={"source": "hub_corpus"}))
            if len(docs) == n:
                break
    if len(docs) < n:
        log.warning("math/hub_corpus: only %d of %d %s documents in %s", len(docs), n, split, opts["path"])
    return docs


def math_benchmark(name: str, size: int, seed: int, domain: Domain) -> list[Task]:
    rows = load_rows(name, size, seed)
    tasks = []
    for i, row in enumerate(rows):
        if name == "gsm8k":
            question, answer = row["question"], row["answer"].split("####")[-1].strip()
        else:
            question, answer = row["problem"], row["answer"]
        tasks.append(Task(id=f"{name}-{i}", domain=domain.name, prompt=f"Question: {question}", reference=answer))
    return tasks


def mbpp_tasks(size: int, seed: int, domain: Domain) -> list[Task]:
    """MBPP (sanitized) as whole-function tasks in the code domain's format, checked by running its asserts."""
    tasks = []
    for row in load_rows("mbpp", size, seed):
        defined = re.findall(r"^def\s+(\w+)\s*\(", row["code"], re.M)
        tested = [name for name in defined if re.search(rf"\b{name}\s*\(", row["test_list"][0])]
        entry = (tested or defined or [None])[-1]
        tests = "\n".join([*(row.get("test_imports") or []), *row["test_list"]])
        prompt = (f"{row['prompt']}\nWrite the Python function `{entry}` in a ```python block after "
                  f"'{domain.answer_prefix}'. It must pass tests like:\n{row['test_list'][0]}")
        tasks.append(domain.function_task(f"mbpp-{row['task_id']}", prompt, "", row["code"], tests, entry))
    return tasks
