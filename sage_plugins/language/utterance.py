"""What the words say before the grammar reads them: fillers, stop/cancel, negation.

Pure logic over normalized text. A recognizer writes out hesitations and stutters ("uh", "the
the"); the grammar has neither, so they are removed before the denoiser reads the text. Two kinds
of utterance are decided here rather than by the grammar: a stop or cancel phrase is a command of
its own (the robot must never miss one), and a negated command ("don't pick up the knife") is no
command at all: it must never yield the action it names.
"""

from __future__ import annotations

from rapidfuzz.distance import OSA

from sage_plugins.language.noise import FILLERS, levenshtein

#: Hesitation words removed from the input (the noise model's fillers and a few more spellings).
STRIPPED_FILLERS = frozenset(FILLERS) | {"uhh", "umm", "uhmm", "erm", "ahh", "hm", "mm", "mmm"}
#: Whole utterances that mean stop or cancel, matched within STOP_TOLERANCE edits per character.
STOP_PHRASES = {
    "stop": "stop", "stop that": "stop", "stop now": "stop", "stop it": "stop", "wait": "stop",
    "wait a second": "stop", "wait here": "stop", "stay there": "stop", "hold on": "stop", "halt": "stop", "freeze": "stop", "stop stop": "stop",
    "cancel": "cancel", "cancel that": "cancel", "never mind": "cancel", "nevermind": "cancel",
    "forget it": "cancel", "forget that": "cancel", "abort": "cancel", "scratch that": "cancel",
}
STOP_TOLERANCE = 0.2
#: Negation words. A token (or two joined, a split word) within one edit (OSA: a swap is one) of a
#: 4+ letter one with the same first letter, or equal to a short one, or holding "'t" (an n't
#: contraction however garbled: "da'tt"; no command has an apostrophe, and the noise models never
#: write one), negates; "do" followed by a near "not" too.
NEGATIONS = ("don't", "dont", "do not", "donot", "never", "not", "no", "don", "shouldn't", "mustn't")
_SHORT_NEG = frozenset({"not", "no", "don"})
_PREFIX_NEG = ("don't", "dont", "never", "donot")
_LONG_NEG = tuple(n for n in NEGATIONS if len(n) >= 4 and " " not in n)


def clean_words(text: str) -> str:
    """`text` without filler words and with immediate word repeats collapsed ("the the" -> "the")."""
    out: list[str] = []
    for w in text.split():
        if w in STRIPPED_FILLERS or (out and out[-1] == w):
            continue
        out.append(w)
    return " ".join(out)


def stop_phrase(text: str) -> tuple[str, str, int] | None:
    """(intent action, phrase, edits) when the whole utterance is a stop/cancel phrase, else None."""
    if not text:
        return None
    best = min(STOP_PHRASES, key=lambda p: (levenshtein(text, p), p))
    d = levenshtein(text, best)
    if d / max(len(text), len(best)) > STOP_TOLERANCE:
        return None
    return STOP_PHRASES[best], best, d


def _negation_token(word: str) -> bool:
    if word in _SHORT_NEG or "'t" in word:  # English writes "'t" only in n't contractions: negations
        return True
    w = word.replace("'", "")
    return len(w) >= 4 and any(w[0] == n[0] and OSA.distance(w, n.replace("'", "")) <= 1 for n in _LONG_NEG)


def negation(text: str, lexicon: frozenset[str] = frozenset()) -> str | None:
    """The negation word(s) heard when the utterance negates what follows ("don't", "do not",
    "never", "not" ...), else None. A token that is itself a word of the command vocabulary is
    not read as a near-miss of a negation (e.g. "done" would be, "pot" is not)."""
    words = text.split()
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w == "do" and OSA.distance(nxt, "not") <= 1:
            return f"do {nxt}"
        if w not in lexicon and (_negation_token(w) or w.startswith(_PREFIX_NEG)):  # "don'tgo": merged
            return w
        if nxt and w not in lexicon and nxt not in lexicon and _negation_token(w + nxt):  # a split word
            return f"{w} {nxt}"
    return None
