"""Role chains as MLflow traces: what each role wrote for a task, as a tree of spans linked to the run.

One trace per sampled task of a transcript step (`trainer.log_transcripts_every`, at most
`trainer.transcripts_per_phase` tasks):

    task                      the document and the task made of it (a proposal, or the rule masker's fallback)
    |- construct  (x M)       each proposal for the document: valid or why not, its reward, which became the task
    |- solve  (x N)           solution, answer, correct, reward, advantage
       |- review              critique against the reference: verdict, agrees with the check, reward
       |- review_blind        the same without the reference (the self-critique used at test time)
       |- refine              revision under the (scrubbed) critique: fixed or not, reference quotes blanked
       |- refine_blind        revision under the blind critique

Evaluation adds one trace per problem (at most `transcripts_per_phase` per suite) of the SCoRe protocol:
attempt t1 -> own critique -> attempt t2. Traces carry the run's tags (reward mode, seed, domain, model)
plus step and phase, so the UI's Traces tab filters one reward mode against another.

Runs are created with `MlflowClient` (no active run), so each trace names its run explicitly (`run_id`);
MLflow's trace exporter writes to the process's tracking URI, which `Tracer` sets to the run's store.
Traces are exported in the background; a trace MLflow does not take is counted (`failed`, from what the
store holds at `finish`), never raised into training.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

TEXT_CHARS = 4000  # inputs and outputs are cut to this many characters (a trace is for reading, not for storage)


def _cut(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + f" ... [{len(text) - TEXT_CHARS} more characters]"


class Tracer:
    """Writes role-chain traces for one MLflow run; every failure is counted and logged, never raised."""

    def __init__(self, tracking_uri: str, experiment_id: str, run_id: str, tags: dict[str, str], limit: int) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(tracking_uri)  # the trace exporter writes to the process's tracking URI
        self.client = MlflowClient(tracking_uri)
        self.experiment_id, self.run_id, self.tags, self.limit = experiment_id, run_id, tags, limit
        self.sent = self.errors = 0

    # -- training --------------------------------------------------------------------------------------
    def step(self, step: int, proposals: list, attempts: list[list]) -> None:
        """One trace per task for the first `limit` tasks of the step."""
        by_doc: dict[str, list] = {}
        for p in proposals:
            by_doc.setdefault(p.doc.id, []).append(p)
        for group in attempts[: self.limit]:
            task = group[0].task
            self._guard(self._task_trace, step, task, by_doc.get(task.doc_id, []), group)

    def _task_trace(self, step: int, task, proposals: list, group: list) -> None:
        """`proposals`: every proposal made from the task's document (one of them became the task, or none
        did and the rule masker's fallback span did)."""
        doc = proposals[0].doc.text if proposals else ""
        solved = sum(a.correct for a in group) / max(len(group), 1)
        fallback = not any(p.task is not None and p.task.id == task.id for p in proposals)
        root = self.client.start_trace(
            "task", span_type="CHAIN", inputs={"document": _cut(doc), "task": _cut(task.prompt)},
            attributes={"step": step, "task_id": task.id, "reference": _cut(task.reference),
                        "kind": str(task.meta.get("kind", "whole")), "fallback_span": fallback},
            tags={**self.tags, "step": str(step), "phase": "train"}, experiment_id=self.experiment_id,
            run_id=self.run_id)
        tid, rid = root.trace_id, root.span_id
        for p in proposals:
            c = p.completion
            self._leaf(tid, rid, "construct", "LLM" if c is not None else "PARSER",
                       {"prompt": _cut(c.prompt if c is not None else "rule masker")},
                       {"proposal": _cut(c.text if c is not None else p.span), "span": _cut(p.span)},
                       {"valid": bool(p.check.valid), "reason": p.check.reason or "", "reward": float(p.reward),
                        "learned": c is not None, "became_this_task": p.task is not None and p.task.id == task.id,
                        "cut": bool(p.cut)})
        for i, a in enumerate(group):
            solve = self.client.start_span("solve", trace_id=tid, parent_id=rid, span_type="LLM",
                                           inputs={"prompt": _cut(a.prompt)},
                                           attributes={"index": i, "correct": bool(a.correct), "reward": float(a.reward),
                                                       "advantage": float(a.advantage)})
            for name, c, prompt, reward in (("review", a.critique, a.critique_prompt, a.review_reward),
                                            ("review_blind", a.blind_critique, a.blind_prompt, a.blind_review_reward)):
                if c is not None:
                    self._leaf(tid, solve.span_id, name, "LLM", {"prompt": _cut(prompt)}, {"critique": _cut(c.text)},
                               {"verdict": "none" if c.verdict is None else str(c.verdict),
                                "agrees_with_check": c.verdict is not None and c.verdict == a.correct,
                                "reward": 0.0 if reward is None else float(reward),
                                "from_oracle": a.critic == "oracle", "error": c.error or ""})
            for name, rev, fixed, leaks in (("refine", a.revision, a.revision_correct, a.revision_leaks),
                                            ("refine_blind", a.blind_revision, a.blind_revision_correct,
                                             a.blind_revision_leaks)):
                if rev is not None:
                    self._leaf(tid, solve.span_id, name, "LLM", {"prompt": _cut(rev.prompt)}, {"revision": _cut(rev.text)},
                               {"fixed": bool(fixed), "reference_leaks_scrubbed": int(leaks)})
            self.client.end_span(tid, solve.span_id, outputs={"solution": _cut(a.completion.text),
                                                              "answer": a.answer or ""})
        self.client.end_trace(tid, outputs={"solve_rate": solved, "solutions": len(group)})
        self.sent += 1

    # -- evaluation ------------------------------------------------------------------------------------
    def self_correction(self, suite: str, step: int, tasks: list, t1: list, ok1: list[bool], critiques: list[str],
                        verdicts: list, t2: list, ok2: list[bool]) -> None:
        """SCoRe chains of the first `limit` problems of a suite: t1 -> own critique -> t2."""
        for row in list(zip(tasks, t1, ok1, critiques, verdicts, t2, ok2))[: self.limit]:
            self._guard(self._eval_trace, suite, step, *row)

    def _eval_trace(self, suite, step, task, t1, ok1, critique, verdict, t2, ok2) -> None:
        root = self.client.start_trace(
            "self_correction", span_type="CHAIN", inputs={"task": _cut(task.prompt)},
            attributes={"suite": suite, "step": step, "task_id": task.id, "reference": _cut(task.reference)},
            tags={**self.tags, "step": str(step), "phase": "eval", "suite": suite},
            experiment_id=self.experiment_id, run_id=self.run_id)
        tid, rid = root.trace_id, root.span_id
        self._leaf(tid, rid, "attempt_t1", "LLM", {"prompt": _cut(t1.prompt)}, {"solution": _cut(t1.text)},
                   {"correct": bool(ok1)})
        self._leaf(tid, rid, "own_critique", "LLM", {"solution": _cut(t1.text)}, {"critique": _cut(critique)},
                   {"verdict": "none" if verdict is None else str(verdict),
                    "agrees_with_check": verdict is not None and verdict == ok1})
        self._leaf(tid, rid, "attempt_t2", "LLM", {"prompt": _cut(t2.prompt)}, {"solution": _cut(t2.text)},
                   {"correct": bool(ok2), "fixed": bool(ok2 and not ok1), "broke": bool(ok1 and not ok2)})
        self.client.end_trace(tid, outputs={"t1_correct": bool(ok1), "t2_correct": bool(ok2)})
        self.sent += 1

    # -- plumbing --------------------------------------------------------------------------------------
    def _leaf(self, tid: str, parent: str, name: str, kind: str, inputs: dict, outputs: dict,
              attributes: dict[str, Any]) -> None:
        span = self.client.start_span(name, trace_id=tid, parent_id=parent, span_type=kind, inputs=inputs,
                                      attributes=attributes)
        self.client.end_span(tid, span.span_id, outputs=outputs)

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001  (a trace never costs the run)
            self.errors += 1
            log.warning("trace not written (%s: %s)", type(exc).__name__, str(exc)[:200])

    def finish(self) -> dict[str, float]:
        """Wait for the background export; count the traces the store did not take."""
        import mlflow

        held = 0
        try:
            mlflow.flush_trace_async_logging()
            held = len(self.client.search_traces(locations=[self.experiment_id], run_id=self.run_id,
                                                 max_results=max(self.sent, 1) + 100))
        except Exception as exc:  # noqa: BLE001
            log.warning("could not count the run's traces (%s)", exc)
            held = self.sent
        failed = max(self.sent - held, 0) + self.errors
        if failed:
            log.warning("%d of %d traces did not reach MLflow", failed, self.sent + self.errors)
        return {"tracking/traces": float(held), "tracking/trace_failures": float(failed)}
