"""The final answer of a response: the content of its last closed \\boxed{} (or \\fbox{}), found in one pass.

Several boxes that stand side by side, joined only by separators ("\\boxed{-2} and \\boxed{1}",
"\\boxed{5}, \\boxed{7}", "\\boxed{5} or \\boxed{7}"), are one answer: the list of their contents. Boxes with
any other text between them are drafts, and only the last one counts ("I first got \\boxed{5}, but ...
\\boxed{6}" answers 6). Text after the last box is not read.
"""

from __future__ import annotations

import re

MAX_RUN = 16  # boxes in one side-by-side run read as a list; a longer run is not one answer

# One token per brace event: a box opening (also "\\\\boxed{" from a response escaped twice), a LaTeX line break
# or an escaped brace (not structure), a brace.
_TOKEN = re.compile(r"\\+(?:boxed|fbox)\s*\{|\\\\|\\[{}]|[{}]")
_TEXT = r"\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{\s*"
# What may stand between two boxes of one run: spacing, punctuation, math delimiters, "and"/"or".
_JOIN = re.compile(rf"(?:\s|[,;.&$]|\\[,;:! ()\[\]]|\\\\|\\q?quad(?![a-zA-Z])|(?:and|or)(?![a-zA-Z])|"
                   rf"{_TEXT},?\s*(?:and|or)?\s*\}})*")
MAX_JOIN_CHARS = 64


def closed_boxes(text: str) -> list[tuple[int, int, int]]:
    """(where the box command starts, where its content starts, where it ends) for every closed box, sorted.
    Linear in len(text): one regex pass over the braces with a stack of the open ones; an unmatched '}' is
    ignored and an unclosed box never closes."""
    stack: list[tuple[int, int] | None] = []  # per open brace: (command start, content start), None if plain
    closed = []
    for m in _TOKEN.finditer(text):
        token = m.group()
        if token == "}":
            if stack and (box := stack.pop()) is not None:
                closed.append((*box, m.start()))
        elif token == "{":
            stack.append(None)
        elif token[-1] == "{" and len(token) > 2:  # \boxed{ or \fbox{
            stack.append((m.start(), m.end()))
    return sorted(closed)


def extract_boxed(text: str) -> str | None:
    """Content of the last box that closes (the one opened last), stripped; None if there is none."""
    boxes = closed_boxes(text)
    return text[boxes[-1][1]:boxes[-1][2]].strip() if boxes else None


def final_answer(text: str) -> str | None:
    """The answer that is graded: the last closed box, or the run of side-by-side boxes it ends, joined as
    "a, b"; stripped. None if the response has no closed box (or a run longer than MAX_RUN)."""
    boxes = closed_boxes(text)
    if not boxes:
        return None
    run = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if box[2] > run[0][0]:  # a box around the first of the run, or nested in another: not beside it
            continue
        gap = text[box[2] + 1:run[0][0]]
        if len(gap) > MAX_JOIN_CHARS or not _JOIN.fullmatch(gap):
            break
        run.insert(0, box)
        if len(run) > MAX_RUN:
            return None
    return ", ".join(text[start:end].strip() for _, start, end in run)
