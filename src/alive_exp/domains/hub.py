"""Benchmarks that live on the Hugging Face hub (GSM8K, MATH-500, MBPP), loaded with `datasets` and cached.

Offline, or without `datasets`, loading fails with a message naming the benchmark and the offline
suites to use instead; nothing here is needed for the default, fully offline configs.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from alive_exp.domains.base import Task

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
