"""The command grammar: generating commands with their intent, and parsing text back to an intent.

The vocabulary and templates live in vocab.json so the grammar can grow without code changes. Two
parsers: `parse` is deterministic and exact (no fuzzy matching): it is the judge of whether a text
says a command, and parsing the raw noisy input with it is the honest baseline for the denoiser.
`nearest` is the grammar-constrained, edit-distance-tolerant parse: the command of the grammar
closest to a text in character edits, found slot by slot (each slot takes the vocabulary entry
nearest to the words aligned with it); `parse_fuzzy` returns its intent when it is close enough.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from sage_plugins.language.noise import levenshtein

VOCAB_PATH = Path(__file__).with_name("vocab.json")
#: How far (edits per character, `Nearest.normalized`) a text may be from its nearest command and
#: still be read as that command. Chosen on validation (seed 7, 1,000 held-out commands at 10% CER):
#: the refined texts' largest distance to their nearest command was 0.278; "hello there" is 0.64.
MAX_NORMALIZED = 0.3
#: One command text in HELDOUT_MODULUS is reserved for evaluation and never generated for training.
HELDOUT_MODULUS = 10


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding blanks: the form the grammar and model use."""
    return " ".join(text.lower().split())


def is_heldout(text: str) -> bool:
    """Whether a (clean, normalized) command text belongs to the evaluation-only split."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HELDOUT_MODULUS == 0


def heldout_part(text: str) -> str:
    """Which half of the evaluation-only split a command text is in: "calibration" (fits the
    confidence calibrator and its threshold) or "evaluation" (measured only). Decided by hash."""
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"sage-cal").digest()
    return "calibration" if digest[0] % 2 else "evaluation"


def _alternation(phrases: list[str]) -> str:
    """Regex alternation, longest phrase first so 'kitchen table' wins over 'kitchen'."""
    return "|".join(re.escape(p) for p in sorted(set(phrases), key=lambda p: (-len(p), p)))


@dataclass(frozen=True)
class Command:
    """A clean command and the intent it expresses."""

    text: str
    intent: dict[str, Any]


@dataclass(frozen=True)
class Nearest:
    """The grammatical command nearest to a text, and how far it is (character edits)."""

    text: str
    intent: dict[str, Any]
    distance: int

    def normalized(self, text: str) -> float:
        """Edit distance over the longer of the two texts, in [0, 1]."""
        return self.distance / max(1, len(normalize(text)), len(self.text))


@dataclass(frozen=True)
class _Element:
    """One position of a template: the phrases allowed there and what choosing one means."""

    key: str                  # cache key of the phrase set
    role: str | None          # action / det / attr / object / place, None for fixed words and nav
    phrases: tuple[str, ...]
    max_words: int


def _bound(length: int, within: float | None) -> int:
    """Edits (exclusive) a command within `within` edits per character of a text of `length`
    characters can be: d <= within * max(length, len(command)) and d >= len(command) - length give
    d <= within * length / (1 - within)."""
    if within is None or within >= 1:
        return 1 << 30
    return int(within * length / (1 - within)) + 1


@lru_cache(maxsize=1 << 14)
def _distance(a: str, b: str) -> int:
    return levenshtein(a, b)


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

    def sample_split(self, rng: random.Random, heldout: bool, part: str | None = None) -> Command:
        """A command from the training split (heldout=False) or the evaluation split (True); `part`
        narrows the evaluation split to its "calibration" or "evaluation" half (heldout_part)."""
        while True:
            cmd = self.sample(rng)
            if is_heldout(cmd.text) == heldout and (part is None or heldout_part(cmd.text) == part):
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

    @cached_property
    def _sequences(self) -> list[tuple[int, tuple[_Element, ...]]]:
        """Every template as a sequence of elements; the object slot is expanded into its 11 shapes
        (0, 1 or 2 attributes from distinct groups in group order, then the object), the shapes
        the generator produces."""
        def element(key: str, role: str | None, phrases: list[str]) -> _Element:
            return _Element(key, role, tuple(phrases), max(len(p.split()) for p in phrases))

        slots = {"{action}": [element("action", "action", [s for ss in self.actions.values() for s in ss])],
                 "{nav}": [element("nav", None, [s for ss in self.nav.values() for s in ss])],
                 "{det}": [element("det", "det", self.determiners)],
                 "{place}": [element("place", "place", self.places)]}
        attrs = [element(f"attr{g}", "attr", group) for g, group in enumerate(self.attribute_groups)]
        obj = element("object", "object", self.objects)
        n_groups = len(self.attribute_groups)
        shapes = [[obj]] + [[attrs[g], obj] for g in range(n_groups)] + \
                 [[attrs[g], attrs[h], obj] for g in range(n_groups) for h in range(g + 1, n_groups)]
        out = []
        for ti, tpl in enumerate(self.templates):
            variants: list[list[_Element]] = [[]]
            for piece in re.split(r"(\{[a-z]+\})", tpl["text"]):
                if piece == "{object}":
                    variants = [v + shape for v in variants for shape in shapes]
                elif piece in slots:
                    variants = [v + slots[piece] for v in variants]
                else:
                    words = [element(f"w:{w}", None, [w]) for w in piece.split()]
                    variants = [v + words for v in variants]
            out += [(ti, tuple(v)) for v in variants]
        return out

    @cached_property
    def _trie(self) -> dict[str, Any]:
        """The element sequences as a prefix tree (templates share their leading elements), so the
        alignment of a shared prefix is computed once."""
        root: dict[str, Any] = {"children": {}, "ends": []}
        for ti, seq in self._sequences:
            node = root
            for el in seq:
                node = node["children"].setdefault(el.key, {"element": el, "children": {}, "ends": []})
            node["ends"].append((ti, seq))
        return root

    @cached_property
    def _lexicon(self) -> frozenset[str]:
        return frozenset(w for _, seq in self._sequences for el in seq for p in el.phrases for w in p.split())

    def _tokenizations(self, words: list[str], limit: int = 8) -> list[tuple[list[str], int]]:
        """The words as they are, and with merged words split again: a word that is no vocabulary
        word is split where both halves are (one edit allowed in a half of 4+ letters) and the split
        (one edit for the lost space, plus the halves' edits) beats the word's nearest vocabulary
        word. Each tokenization comes with its extra edits; at most `limit` of them."""
        options: list[list[tuple[list[str], int]]] = []
        for w in words:
            alts: list[tuple[list[str], int]] = [([w], 0)]
            if w not in self._lexicon and len(w) >= 3:
                whole = min(_distance(w, v) for v in self._lexicon)
                for k in range(1, len(w)):
                    a, b = w[:k], w[k:]
                    da = 0 if a in self._lexicon else min(
                        (_distance(a, v) for v in self._lexicon if len(a) >= 4 and abs(len(v) - len(a)) <= 1),
                        default=99)
                    db = 0 if b in self._lexicon else min(
                        (_distance(b, v) for v in self._lexicon if len(b) >= 4 and abs(len(v) - len(b)) <= 1),
                        default=99)
                    if da <= 1 and db <= 1 and 1 + da + db < whole:
                        alts.append(([a, b], 1))
            options.append(alts)
        out: list[tuple[list[str], int]] = [([], 0)]
        for alts in options:
            out = [(ws + a, c + d) for ws, c in out for a, d in alts][:limit]
        return out

    def nearest(self, text: str, within: float | None = None) -> Nearest | None:
        """`_nearest`, memoized (refinement asks again for texts it has already snapped). With
        `within` (edits per character, `Nearest.normalized`) only a command that near is looked
        for, and None returned when there is none: the same answer for the commands that near,
        found much faster for text far from every command (the bound prunes the search)."""
        cache: dict[tuple[str, float | None], Nearest | None] = self.__dict__.setdefault("_nearest_cache", {})
        key = (text, within)
        if key not in cache:
            if len(cache) > 4096:
                cache.clear()
            near = self._nearest(text, _bound(len(normalize(text)), within))
            cache[key] = near if within is None or (near is not None and near.normalized(text) <= within) else None
        return cache[key]

    def _nearest(self, text: str, bound: int = 1 << 30) -> Nearest | None:
        """The command of the grammar nearest to `text` in character edits (None for empty text).

        The text's words are aligned with a template's elements by dynamic programming: each
        element takes a run of 0 to (its longest phrase's words + 1) words, so split words and
        merged multi-word phrases are covered, and costs the edit distance from those words (joined
        by spaces) to its nearest allowed phrase (an empty run costs the phrase and its space).
        Words merged across two elements are split first (`_tokenizations`). The total is an upper
        bound of the edit distance between the two texts, exact when word boundaries line up. Ties
        go to the earlier template and phrase (vocab.json order). A grammatical text is its own
        nearest command at distance 0.
        """
        text = normalize(text)
        if not text:
            return None
        exact = self.parse(text)
        if exact is not None:
            return Nearest(text, exact, 0)
        found = self._search(text, bound)
        if found is None:
            return None
        total, parts = found
        return Nearest(" ".join(p for _, p in parts[1:]), self._intent(parts), total)

    def _search(self, text: str, bound: int = 1 << 30) -> tuple[int, tuple[tuple[str, str], ...]] | None:
        """(edits, ((role, phrase) per element)) of the nearest element sequence, by `_align`;
        only sequences nearer than `bound` edits are looked for (bound=1: exact ones, fast)."""
        best: list[Any] = [bound, None]
        for words, extra in self._tokenizations(text.split()):
            self._align(words, extra, best)
        total, choice = best
        if choice is None:
            return None
        ti, seq, phrases = choice
        roles = [el.role or ("fixed" if el.key.startswith("w:") else el.key) for el in seq]
        return total, (("template", str(ti)),) + tuple(zip(roles, phrases))

    def _intent(self, parts: tuple[tuple[str, str], ...]) -> dict[str, Any]:
        tpl = self.templates[int(parts[0][1])]
        intent: dict[str, Any] = {"action": tpl.get("action"), "object": None, "attributes": [], "place": None}
        for role, phrase in parts[1:]:
            if role == "action":
                intent["action"] = self._surface_action[phrase]
            elif role in ("object", "place"):
                intent[role] = phrase
            elif role == "attr":
                intent["attributes"].append(phrase)
        return intent

    def parts(self, command: str) -> tuple[tuple[str, str], ...] | None:
        """A command's elements as (role, phrase) pairs after a ("template", index) pair, roles
        action / nav / det / attr / object / place / fixed; None when `command` is no command."""
        command = normalize(command)
        if self.parse(command) is None:
            return None
        cache: dict[str, Any] = self.__dict__.setdefault("_parts_cache", {})
        if command not in cache:
            if len(cache) > 4096:
                cache.clear()
            found = self._search(command, bound=1)
            cache[command] = None if found is None or found[0] != 0 else found[1]
        return cache[command]

    def heard(self, text: str, command: str) -> list[tuple[str, str, str, int]] | None:
        """How the words of `text` line up with the elements of `command`: per element (role,
        phrase, the words heard there ("" when none), edits), over the cheapest tokenization of
        `text` (merged words split again, `_tokenizations`). None when they cannot be aligned."""
        parts = self.parts(command)
        if parts is None:
            return None
        best: tuple[int, list[tuple[str, str, str, int]]] | None = None
        for words, extra in self._tokenizations(normalize(text).split()):
            got = align_to(words, list(parts[1:]))
            if got is not None and (best is None or got[0] + extra < best[0]):
                best = (got[0] + extra, got[1])
        return None if best is None else best[1]

    def _align(self, words: list[str], extra: int, best: list[Any]) -> None:
        """Branch-and-bound alignment of `words` with every element sequence; updates best =
        [total edits, (template, sequence, phrases)] when it finds a nearer command."""
        n = len(words)
        spans = {(i, j): " ".join(words[i:j]) for i in range(n + 1) for j in range(i, n + 1)}
        costs: dict[tuple[str, int, int], tuple[int, str]] = {}

        def cost(el: _Element, i: int, j: int) -> tuple[int, str]:
            key = (el.key, i, j)
            if key not in costs:
                if i == j:
                    phrase = min(el.phrases, key=len)
                    costs[key] = (len(phrase) + 1, phrase)
                else:
                    span = spans[(i, j)]
                    best_d, phrase = 1 << 30, el.phrases[0]
                    for p in el.phrases:
                        if abs(len(p) - len(span)) < best_d:
                            d = _distance(span, p)
                            if d < best_d:
                                best_d, phrase = d, p
                    costs[key] = (best_d, phrase)
            return costs[key]

        def visit(node: dict[str, Any], dp: list[tuple[int, tuple[str, ...]] | None]) -> None:
            last = dp[n]
            if last is not None and last[0] < best[0]:
                for ti, seq in node["ends"]:
                    best[0], best[1] = last[0], (ti, seq, last[1])
                    break
            for child in node["children"].values():
                el = child["element"]
                nxt: list[tuple[int, tuple[str, ...]] | None] = [None] * (n + 1)
                alive = False
                for i, cell in enumerate(dp):
                    if cell is None or cell[0] >= best[0]:
                        continue
                    for j in range(i, min(n, i + el.max_words + 1) + 1):
                        d, phrase = cost(el, i, j)
                        c = cell[0] + d
                        if c < best[0] and (nxt[j] is None or c < nxt[j][0]):
                            nxt[j] = (c, cell[1] + (phrase,))
                            alive = True
                if alive:
                    visit(child, nxt)

        visit(self._trie, [(extra, ())] + [None] * n)

    def parse_fuzzy(self, text: str, max_normalized: float = MAX_NORMALIZED) -> dict[str, Any] | None:
        """The intent of the nearest command when it is within `max_normalized` edits per character
        of `text` (see `Nearest.normalized`), else None: text too far from every command is not
        turned into one."""
        near = self.nearest(text, max_normalized)
        return None if near is None else near.intent

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


def align_to(words: list[str], parts: list[tuple[str, str]], slack: int = 2
             ) -> tuple[int, list[tuple[str, str, str, int]]] | None:
    """Align `words` with a fixed sequence of (role, phrase) elements by dynamic programming: each
    element takes a run of 0 to (its words + slack) words and costs the edit distance of that run to
    its phrase (an empty run: the phrase and its space). Returns (total edits, per element (role,
    phrase, run, edits)) or None when the words cannot all be covered."""
    n, inf = len(words), 1 << 30
    dp = [[inf] * (n + 1) for _ in range(len(parts) + 1)]
    back: list[list[int]] = [[-1] * (n + 1) for _ in range(len(parts) + 1)]
    dp[0][0] = 0
    for e, (_, phrase) in enumerate(parts):
        width = len(phrase.split()) + slack
        for i in range(n + 1):
            if dp[e][i] >= inf:
                continue
            for j in range(i, min(n, i + width) + 1):
                d = len(phrase) + 1 if i == j else _distance(" ".join(words[i:j]), phrase)
                if dp[e][i] + d < dp[e + 1][j]:
                    dp[e + 1][j], back[e + 1][j] = dp[e][i] + d, i
    if dp[len(parts)][n] >= inf:
        return None
    out, j = [], n
    for e in range(len(parts), 0, -1):
        i = back[e][j]
        role, phrase = parts[e - 1]
        out.append((role, phrase, " ".join(words[i:j]), dp[e][j] - dp[e - 1][i]))
        j = i
    return dp[len(parts)][n], out[::-1]
