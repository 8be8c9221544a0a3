"""The reasoning trinity: prompt templates and output parsers for constructor, solver and reviewer.

Templates live in `conf/roles/` and reach here as plain strings with `{field}` placeholders.
Parsers never raise: malformed output becomes a value with a `reason`, which the step counts
as `invalid/<role>` and keeps in the transcript.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from alive_exp.domains.base import Critique

ROLES = ("constructor", "solver", "reviewer")

_VERDICT = re.compile(r"verdict\s*[:\-]\s*\**\s*(correct|incorrect|right|wrong)\b", re.IGNORECASE)
_SPAN = re.compile(r"span\s*:\s*(.+)", re.IGNORECASE)


@dataclass(frozen=True)
class RoleTemplates:
    """Prompt templates, one per role and situation (see conf/roles/default.yaml)."""

    constructor: str
    solver: str
    reviewer: str
    reviewer_blind: str
    refiner: str
    fcp_solver: str

    def __post_init__(self) -> None:
        required = {
            "constructor": {"document"},
            "solver": {"task"},
            "reviewer": {"task", "reference", "solution"},
            "reviewer_blind": {"task", "solution"},
            "refiner": {"task", "solution", "critique"},
            "fcp_solver": {"task", "critique"},
        }
        for name, fields in required.items():
            have = {f for _, f, _, _ in string.Formatter().parse(getattr(self, name)) if f}
            if missing := fields - have:
                raise ValueError(f"roles.{name} template lacks placeholder(s) {sorted(missing)}")

    def render(self, name: str, **fields: str) -> str:
        return getattr(self, name).format(**fields)


@dataclass(frozen=True)
class ParsedSpan:
    span: str | None
    reason: str = ""


def parse_span(text: str) -> ParsedSpan:
    """Constructor output: `Span: <verbatim text>` (the first such line)."""
    m = _SPAN.search(text)
    if m is None:
        return ParsedSpan(None, "no 'Span:' line")
    span = m.group(1).strip()
    return ParsedSpan(span, "") if span else ParsedSpan(None, "empty span")


def parse_critique(text: str) -> Critique:
    """Reviewer output: free-text critique whose last verdict line reads `Verdict: correct|incorrect`."""
    matches = _VERDICT.findall(text)
    if not matches:
        return Critique(text=text, verdict=None, error="no 'Verdict: correct|incorrect' line")
    word = matches[-1].lower()
    return Critique(text=text, verdict=word in ("correct", "right"))


_DIGIT_PAIRS = re.compile(r": (?:[\d-] [\d-], )*[\d-] [\d-]: ")  # `: 8 8, 3 2: ` (domains.columns.digit_pairs)
# a blind column reviewer's own check (domains.columns.own_check): its working lines, and the answer they gave
_WORKING = re.compile(r"^[ \t]*\d+(?:[ \t]*[+-][ \t]*\d+)*[ \t]*=[ \t]*-?\d+(?:[ \t]+[cb]1)?[ \t]*(?:\n|$)", re.MULTILINE)
_MINE = re.compile(r"\bMine -?\d+")


def scrub_reference(text: str, reference: str) -> tuple[str, int]:
    """The critique with every quotation of the task's reference blanked out, and how many there were.

    What a refiner or a feedback-conditioned solver reads must not hold the hidden answer, or learning from
    it is supervised learning on the labels. A number counts as quoted only as a whole number (`13` is not
    in `130`), and a comparison digit pair by digit pair (`: 8 8, 3 2: `, what a column reviewer writes) is cut
    out whole; other references (words, code) as a case-insensitive substring. A blind column reviewer's own
    working (`8+6=14 c1` lines) and the answer it gave (`Mine 834`) are cut too (not counted as quotations).
    """
    # a reviewer's own working is cut whatever the reference: the oracle's would hand over the answer, and the
    # model's own is cut alike so that what a refiner reads in RL is what it read in the warm start
    text = _MINE.sub("Mine ?", _WORKING.sub("", text))
    ref = str(reference).strip()
    if not ref:
        return text, 0
    if re.fullmatch(r"-?\d+(?:\.\d+)?", ref):
        pattern = re.compile(rf"(?<![\d.]){re.escape(ref)}(?![\d]|\.\d)")
        text, paired = _DIGIT_PAIRS.subn(": ", text)  # a comparison digit by digit quotes the reference's digits
        text, quoted = pattern.subn("?", text)
        return text, quoted + paired
    pattern = re.compile(re.escape(ref), re.IGNORECASE)
    return pattern.subn("?", text)


KEEP = "The solution stands."  # a refiner's whole answer when the solution it read is right: it is kept as written


def revised_text(solution: str, revision: str) -> str:
    """What a refiner's answer amounts to: the solution it read where it answered `KEEP`, else its own text.

    Keeping a right solution is a decision, not a copy: a tiny model that must rewrite a solution token by
    token to keep it breaks most of them (docs/learning_investigation.md, round 4: 10-20% kept)."""
    return solution if revision.strip() == KEEP else revision


def critique_body(text: str) -> str:
    """The critique without its verdict line(s), as shown to the solver when it refines."""
    lines = [ln for ln in text.strip().splitlines() if not _VERDICT.search(ln)]
    return "\n".join(lines).strip()


def as_read(critique_text: str, reference: str) -> str:
    """A critique as a refiner or a feedback-conditioned solver reads it (warm start, training, readiness,
    evaluation alike): its body, the reference and a blind reviewer's own working scrubbed (`scrub_reference`)."""
    return scrub_reference(critique_body(critique_text), reference)[0]
