"""A speech-recognizer-like corruption model with a controlled character error rate (CER).

Edits are what ASR output shows: substitutions by phonetically close or keyboard-adjacent letters,
dropped and doubled letters, inserted letters, words split by a stray space and words merged by a
lost space. The number of edits in a text of n characters is Binomial(n, cer), and a draw is kept
only when the Levenshtein distance equals that number (edits can cancel or merge), so the corpus
CER, sum of distances / sum of lengths, is the target in expectation, measured not assumed.
"""

from __future__ import annotations

import random

from rapidfuzz.distance import Levenshtein

LETTERS = "abcdefghijklmnopqrstuvwxyz"

_PHONETIC_GROUPS = ["bp", "dt", "gkcq", "fv", "szc", "mn", "iey", "aeou", "wv", "lr", "jg", "xs", "hf", "th"]
PHONETIC: dict[str, str] = {}
for _group in _PHONETIC_GROUPS:
    for _ch in _group:
        PHONETIC[_ch] = "".join(sorted(set(PHONETIC.get(_ch, "")) | set(_group.replace(_ch, ""))))

_ROWS = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
KEYBOARD: dict[str, str] = {}
for _r, _row in enumerate(_ROWS):
    for _c, _ch in enumerate(_row):
        near = {_row[j] for j in (_c - 1, _c + 1) if 0 <= j < len(_row)}
        for _rr in (_r - 1, _r + 1):
            if 0 <= _rr < len(_ROWS):
                near |= {_ROWS[_rr][j] for j in (_c - 1, _c, _c + 1) if 0 <= j < len(_ROWS[_rr])}
        KEYBOARD[_ch] = "".join(sorted(near))


def levenshtein(a: str, b: str) -> int:
    """Edit distance (unit-cost substitution, insertion, deletion); rapidfuzz's C++ kernel, since
    the grammar constraint computes thousands per command inside the tick budget."""
    return Levenshtein.distance(a, b)


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate of a hypothesis against its reference."""
    return levenshtein(reference, hypothesis) / max(1, len(reference))


def _near_letter(ch: str, rng: random.Random) -> str:
    """A substitute for a letter: phonetically close, keyboard-adjacent, or any other letter."""
    r = rng.random()
    pool = PHONETIC.get(ch, "") if r < 0.5 else KEYBOARD.get(ch, "") if r < 0.85 else ""
    pool = pool.replace(ch, "") or LETTERS.replace(ch, "")
    return rng.choice(pool)


def _edit(chars: list[str], i: int, rng: random.Random) -> None:
    """Apply one edit at position i of the clean text (each slot holds what replaces that char)."""
    ch = chars[i]
    if ch == " ":
        op = rng.choices(["merge", "sub", "insert"], [0.7, 0.1, 0.2])[0]
        if op == "merge":
            chars[i] = ""
        elif op == "sub":
            chars[i] = rng.choice(LETTERS)
        else:
            chars[i] = " " + rng.choice(LETTERS) if rng.random() < 0.5 else rng.choice(LETTERS) + " "
        return
    op = rng.choices(["sub", "delete", "insert", "split"], [0.55, 0.2, 0.15, 0.1])[0]
    if op == "sub":
        chars[i] = _near_letter(ch, rng)
    elif op == "delete":
        chars[i] = ""
    elif op == "insert":
        extra = ch if rng.random() < 0.4 else _near_letter(ch, rng)
        chars[i] = ch + extra if rng.random() < 0.5 else extra + ch
    else:  # split the word here; only inside a word, where the space is not swallowed by a neighbour
        after = i + 1 < len(chars) and chars[i + 1] not in ("", " ")
        before = i > 0 and chars[i - 1] not in ("", " ")
        if after and (not before or rng.random() < 0.5):
            chars[i] = ch + " "
        elif before:
            chars[i] = " " + ch
        else:
            chars[i] = _near_letter(ch, rng)


def corrupt(text: str, rate: float, rng: random.Random, max_tries: int = 20) -> str:
    """`text` with Binomial(len, rate) ASR-like edits; the result's edit distance is that count."""
    if rate <= 0 or not text:
        return text
    n = len(text)
    k = sum(rng.random() < rate for _ in range(n))
    if k == 0:
        return text
    out = text
    for _ in range(max_tries):
        chars = list(text)
        for i in rng.sample(range(n), min(k, n)):
            _edit(chars, i, rng)
        out = "".join(chars)
        if levenshtein(text, out) == k:
            return out
    return out


# ---- word-level recognizer errors ---------------------------------------------------------------

#: Hesitations a recognizer writes out. The plugin strips exactly these (utterance.FILLERS).
FILLERS = ("uh", "um", "uhm", "er", "erm", "ah", "hmm")
#: Short words a recognizer drops or stutters; the grammar tolerates their loss.
FUNCTION_WORDS = ("the", "a", "to", "in", "on", "from", "and", "please", "my", "me", "that", "this")
#: Sound-alike whole-word confusions (homophones and near-homophones), both directions.
SOUND_ALIKE_PAIRS = [
    ("to", "too"), ("to", "two"), ("for", "four"), ("the", "a"), ("in", "and"), ("on", "an"), ("me", "mi"),
    ("red", "read"), ("blue", "blew"), ("cup", "cop"), ("pick", "peek"), ("up", "op"), ("pot", "pat"),
    ("pan", "pen"), ("box", "socks"), ("bag", "back"), ("hat", "had"), ("light", "lite"), ("door", "dour"),
    ("bowl", "ball"), ("knife", "nice"), ("keys", "ease"), ("shirt", "short"), ("towel", "tower"),
    ("glass", "class"), ("plate", "played"), ("table", "cable"), ("bed", "bad"), ("sink", "think"),
    ("desk", "disk"), ("floor", "flour"), ("stairs", "stares"), ("go", "goal"), ("get", "got"),
    ("bring", "ring"), ("grab", "crab"), ("take", "tape"), ("open", "often"), ("close", "clothes"),
    ("find", "fine"), ("hold", "old"), ("check", "chick"), ("wash", "watch"), ("fold", "fooled"),
    ("move", "groove"), ("turn", "tern"), ("new", "knew"), ("white", "wide"), ("big", "pig"),
    ("wet", "what"), ("full", "fool"), ("where", "wear"), ("is", "his"), ("you", "yew"), ("here", "hear"),
]
SOUND_ALIKE: dict[str, list[str]] = {}
for _a, _b in SOUND_ALIKE_PAIRS:
    SOUND_ALIKE.setdefault(_a, []).append(_b)
    SOUND_ALIKE.setdefault(_b, []).append(_a)


def _sound_alike(word: str, rng: random.Random) -> str:
    """A word that sounds like `word`: a listed confusion, else one phonetically close letter."""
    if word in SOUND_ALIKE:
        return rng.choice(SOUND_ALIKE[word])
    i = rng.randrange(len(word))
    pool = PHONETIC.get(word[i], "") or LETTERS
    return word[:i] + rng.choice(pool) + word[i + 1:]


def corrupt_words(text: str, rate: float, rng: random.Random, cer: float = 0.0) -> str:
    """Word-level recognizer errors, then `cer` character edits (`corrupt`).

    Each word is hit with probability `rate` by one error: a sound-alike substitution, a filler
    ("uh") before it, a dropped or repeated function word, a split (a space inside the word) or a
    merge with the next word. The generator is the caller's `rng`: training, calibration and
    evaluation each use their own seeds."""
    words = text.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if rng.random() >= rate:
            out.append(w)
            continue
        op = rng.choices(["sound", "filler", "function", "split", "merge"], [0.35, 0.2, 0.2, 0.1, 0.15])[0]
        if op == "function" and w not in FUNCTION_WORDS:
            op = "sound"
        if op == "sound":
            out.append(_sound_alike(w, rng))
        elif op == "filler":
            out += [rng.choice(FILLERS), w]
        elif op == "function":
            out += [w, w] if rng.random() < 0.4 else []
        elif op == "split" and len(w) >= 4:
            k = rng.randrange(2, len(w) - 1)
            out += [w[:k], w[k:]]
        elif op == "merge" and i < len(words):
            out.append(w + words[i])
            i += 1
        else:
            out.append(w)
    noisy = " ".join(out) or text
    return corrupt(noisy, cer, rng)
