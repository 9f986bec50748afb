"""Out-of-grammar utterances (things said that are not commands), from oog.json.

Two disjoint generators, each with its own templates and words: `calibration` fits the confidence
calibrator and picks the acceptance threshold; `evaluation` is held out and used for nothing but
measuring. Statements mention the command vocabulary ("the red cup is in the kitchen") so the
plugin is judged on text that looks like a command without being one.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from sage_plugins.language.grammar import Grammar

OOG_PATH = Path(__file__).with_name("oog.json")
SETS = ("calibration", "evaluation")


def _fill(template: str, words: dict[str, list[str]], grammar: Grammar, rng: random.Random) -> str:
    shared = {"object": grammar.objects, "place": grammar.places, "colour": grammar.attribute_groups[2],
              "attr": grammar.attribute_groups[1]}
    return re.sub(r"\{([a-z]+)\}", lambda m: rng.choice({**shared, **words}[m.group(1)]), template)


def utterances(which: str, n: int, seed: int, grammar: Grammar | None = None) -> list[str]:
    """`n` distinct utterances of set `which` (or all it can make, if fewer), in a seeded order."""
    if which not in SETS:
        raise ValueError(f"unknown out-of-grammar set {which!r}; expected one of {SETS}")
    spec = json.loads(OOG_PATH.read_text())[which]
    grammar = grammar or Grammar.load()
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    for _ in range(50 * n):
        if len(seen) >= n:
            break
        text = _fill(rng.choice(spec["templates"]), spec["words"], grammar, rng)
        if grammar.parse(text) is None:
            seen.setdefault(text)
    return list(seen)


def negated(which: str, n: int, seed: int, grammar: Grammar | None = None, part: str | None = None
            ) -> list[tuple[str, dict]]:
    """`n` (negated utterance, intent of the command it negates) pairs of set `which`; the commands
    come from the grammar's evaluation-only split (`part`: which half, see grammar.heldout_part)."""
    if which not in SETS:
        raise ValueError(f"unknown out-of-grammar set {which!r}; expected one of {SETS}")
    templates = json.loads(OOG_PATH.read_text())[which]["negations"]
    grammar = grammar or Grammar.load()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cmd = grammar.sample_split(rng, heldout=True, part=part)
        out.append((rng.choice(templates).replace("{command}", cmd.text), cmd.intent))
    return out
