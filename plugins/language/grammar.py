"""The command grammar: generating commands with their intent, and parsing text back to an intent.

The vocabulary and templates live in vocab.json so the grammar can grow without code changes. The
parser is deterministic and exact (no fuzzy matching): it is the judge of whether a text says a
command, which is why parsing the raw noisy input is the honest baseline for the denoiser.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

VOCAB_PATH = Path(__file__).with_name("vocab.json")
#: One command text in HELDOUT_MODULUS is reserved for evaluation and never generated for training.
HELDOUT_MODULUS = 10


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding blanks: the form the grammar and model use."""
    return " ".join(text.lower().split())


def is_heldout(text: str) -> bool:
    """Whether a (clean, normalized) command text belongs to the evaluation-only split."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HELDOUT_MODULUS == 0


def _alternation(phrases: list[str]) -> str:
    """Regex alternation, longest phrase first so 'kitchen table' wins over 'kitchen'."""
    return "|".join(re.escape(p) for p in sorted(set(phrases), key=lambda p: (-len(p), p)))


@dataclass(frozen=True)
class Command:
    """A clean command and the intent it expresses."""

    text: str
    intent: dict[str, Any]


class Grammar:
    """Vocabulary + templates: sample commands, parse text to intents."""

    def __init__(self, vocab: dict[str, Any]) -> None:
        self.vocab = vocab
        self.actions: dict[str, list[str]] = vocab["actions"]
        self.nav: dict[str, list[str]] = vocab["nav"]
        self.objects: list[str] = vocab["objects"]
        self.attribute_groups: list[list[str]] = vocab["attributes"]
        self.places: list[str] = vocab["places"]
        self.determiners: list[str] = vocab["determiners"]
        self.templates: list[dict[str, Any]] = vocab["templates"]
        counts = vocab["attribute_counts"]
        self._attr_counts = [int(k) for k in counts]
        self._attr_weights = [float(v) for v in counts.values()]
        self._surface_action = {s: a for a, ss in {**self.actions, **self.nav}.items() for s in ss}

    @classmethod
    def load(cls, path: Path = VOCAB_PATH) -> "Grammar":
        return cls(json.loads(path.read_text()))

    @cached_property
    def attributes(self) -> list[str]:
        return [a for group in self.attribute_groups for a in group]

    @cached_property
    def action_names(self) -> list[str]:
        fixed = [t["action"] for t in self.templates if "action" in t]
        return sorted(set(self.actions) | set(self.nav) | set(fixed))

    # ---- generation -------------------------------------------------------------------------

    def _object_phrase(self, rng: random.Random) -> tuple[str, str, list[str]]:
        obj = rng.choice(self.objects)
        k = rng.choices(self._attr_counts, self._attr_weights)[0]
        groups = sorted(rng.sample(range(len(self.attribute_groups)), k))
        attrs = [rng.choice([a for a in self.attribute_groups[g] if a != obj]) for g in groups]
        return " ".join([*attrs, obj]), obj, attrs

    def sample(self, rng: random.Random) -> Command:
        """One command drawn from the template weights, with its ground-truth intent."""
        tpl = rng.choices(self.templates, [t["weight"] for t in self.templates])[0]
        text = tpl["text"]
        intent: dict[str, Any] = {"action": tpl.get("action"), "object": None, "attributes": [], "place": None}
        if "{action}" in text:
            action = rng.choice(sorted(self.actions))
            intent["action"] = action
            text = text.replace("{action}", rng.choice(self.actions[action]))
        if "{nav}" in text:
            text = text.replace("{nav}", rng.choice([s for ss in self.nav.values() for s in ss]))
        if "{det}" in text:
            text = text.replace("{det}", rng.choice(self.determiners))
        if "{object}" in text:
            phrase, obj, attrs = self._object_phrase(rng)
            intent["object"], intent["attributes"] = obj, attrs
            text = text.replace("{object}", phrase)
        if "{place}" in text:
            place = rng.choice(self.places)
            intent["place"] = place
            text = text.replace("{place}", place)
        return Command(text, intent)

    def sample_split(self, rng: random.Random, heldout: bool) -> Command:
        """A command from the training split (heldout=False) or the evaluation split (True)."""
        while True:
            cmd = self.sample(rng)
            if is_heldout(cmd.text) == heldout:
                return cmd

    # ---- parsing ----------------------------------------------------------------------------

    @cached_property
    def _patterns(self) -> list[tuple[re.Pattern[str], str | None]]:
        action = f"(?P<action>{_alternation([s for ss in self.actions.values() for s in ss])})"
        nav = f"(?:{_alternation([s for ss in self.nav.values() for s in ss])})"
        attr = _alternation(self.attributes)
        obj = f"(?P<attrs>(?:(?:{attr}) ){{0,{len(self.attribute_groups)}}})(?P<object>{_alternation(self.objects)})"
        slots = {"{action}": action, "{nav}": nav, "{det}": f"(?:{_alternation(self.determiners)})",
                 "{object}": obj, "{place}": f"(?P<place>{_alternation(self.places)})"}
        out = []
        for tpl in self.templates:
            pieces = re.split(r"(\{[a-z]+\})", tpl["text"])
            regex = "".join(slots[p] if p in slots else re.escape(p) for p in pieces)
            out.append((re.compile(regex), tpl.get("action")))
        return out

    def parse(self, text: str) -> dict[str, Any] | None:
        """The intent a text expresses, or None when it is not a command of the grammar."""
        text = normalize(text)
        for pattern, fixed_action in self._patterns:
            m = pattern.fullmatch(text)
            if m is None:
                continue
            groups = m.groupdict()
            action = fixed_action or self._surface_action[groups["action"]]
            attrs = groups.get("attrs")
            return {"action": action, "object": groups.get("object"),
                    "attributes": attrs.split() if attrs else [], "place": groups.get("place")}
        return None
