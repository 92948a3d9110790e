"""Rule-based rewards on text answers: SQuAD token F1 (slime's `f1`) and multiple-choice letters (`gpqa`)."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any


def _normalise_squad(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, reference: Any) -> tuple[float, float, float]:
    """(F1, precision, recall) of the normalised tokens; the best over a list of references."""
    references = reference if isinstance(reference, (list, tuple)) else [reference]
    best = (0.0, 0.0, 0.0)
    predicted = _normalise_squad(prediction or "").split()
    for item in references:
        gold = _normalise_squad(str(item)).split()
        common = sum((Counter(predicted) & Counter(gold)).values())
        if not predicted or not gold:
            scores = (float(predicted == gold),) * 3
        elif common == 0:
            scores = (0.0, 0.0, 0.0)
        else:
            precision, recall = common / len(predicted), common / len(gold)
            scores = (2 * precision * recall / (precision + recall), precision, recall)
        best = max(best, scores)
    return best


_LETTER_PATTERNS = (
    re.compile(r"(?i)answer\s*(?:is|:)?\s*\(?\**\s*([A-J])\b"),
    re.compile(r"\\boxed\{\s*\(?([A-J])\)?\s*\}"),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"\b([A-J])\b"),
)


def extract_choice_letter(response: str, valid: str = "ABCDEFGHIJ") -> str | None:
    """The chosen option letter: an explicit 'Answer: X' wins, then a boxed letter, then '(X)', then the last bare
    capital letter among the valid options."""
    text = response.split("</think>", 1)[-1]
    for pattern in _LETTER_PATTERNS:
        found = [letter.upper() for letter in pattern.findall(text) if letter.upper() in valid]
        if found:
            return found[-1]
    return None


def gpqa_reward(response: str, label: Any, metadata: dict[str, Any] | None = None) -> float:
    """1.0 when the chosen letter is the correct one. The label is a letter, or the correct option's text when the
    metadata lists the `choices` (then its position gives the letter)."""
    metadata = metadata or {}
    choices = metadata.get("choices")
    letters = "ABCDEFGHIJ"[: len(choices)] if choices else "ABCDEFGHIJ"
    correct = metadata.get("correct_letter")
    if correct is None and isinstance(label, str) and label.strip().upper() in letters and len(label.strip()) == 1:
        correct = label.strip().upper()
    if correct is None and choices and label in choices:
        correct = letters[choices.index(label)]
    if correct is None:
        raise ValueError(f"gpqa reward: cannot tell the correct letter from label {label!r} "
                         "(give a letter, or metadata['choices'] with the correct option's text as label)")
    return 1.0 if extract_choice_letter(response, letters) == correct else 0.0
