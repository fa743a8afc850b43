"""The built-in demo: train a tiny character-level LSTM on generated bracketed text, trace it,
and find the units that track nesting depth.

Everything is generated here (no download) and runs in well under a minute on 2 CPU cores.
The corpus is strings like ``ab(c(ab)c)a`` whose next character depends on how deep inside
brackets the text is, so a language model that predicts it well has to count: the demo shows
which hidden units do, by their correlation with the true depth on held-out text, next to
the correlation a random unit reaches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

import rnnlens
from rnnlens.core.optional import require

from ..viz import html_report

__all__ = ["VOCAB", "DemoResult", "WriteSources", "depth_of", "make_corpus", "run_demo", "write_sources"]

VOCAB = "_ab()"  # "_" pads (id 0, masked)
MAX_DEPTH = 4


def make_corpus(n: int, length: int, *, seed: int = 0) -> list[str]:
    """``n`` strings of exactly ``length`` characters with balanced, nested brackets."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        depth, chars = 0, []
        for pos in range(length):
            remaining = length - pos
            if depth >= remaining:  # must close everything before the end
                chars.append(")")
                depth -= 1
                continue
            r = rng.random()
            if r < 0.25 and depth < MAX_DEPTH and depth + 1 < remaining:
                chars.append("(")
                depth += 1
            elif r < 0.45 and depth > 0:
                chars.append(")")
                depth -= 1
            else:
                chars.append("ab"[int(rng.integers(0, 2))])
        out.append("".join(chars))
    return out


def depth_of(text: str) -> np.ndarray:
    """Nesting depth after reading each character."""
    steps = np.array([1 if ch == "(" else -1 if ch == ")" else 0 for ch in text])
    return np.cumsum(steps)


def encode(texts: list[str]) -> np.ndarray:
    return np.array([[VOCAB.index(ch) for ch in t] for t in texts], dtype="int32")


@dataclass
class DemoResult:
    """What the demo found. ``top_units`` are (field, unit, Pearson r) by |r|;
    ``random_baseline`` is the median |r| over all units of the layer."""

    texts: list[str]
    depth: np.ndarray
    states: object
    top_units: list[tuple[str, int, float]]
    random_baseline: float
    accuracy: float
    closing: tuple[float, float, list[float]] = (0.0, 0.0, [])  # p(")"): intact, top ablated, random ablated
    sources: list[WriteSources] | None = None  # where the depth units' c came from at closing brackets


@dataclass
class WriteSources:
    """``rnnlens.decompose`` of one unit's ``c`` at every closing bracket of the held-out text.

    ``from_opening``: how often the step whose write contributes most is an opening bracket;
    ``from_matching``: how often it is the bracket being closed, beside ``matching_chance``
    (the same rate if that step were any earlier opening bracket, uniformly);
    ``opening_share``: the share of Σ|contribution| written at opening brackets, beside
    ``opening_steps`` (the share of steps that are opening brackets)."""

    unit: int
    closers: int
    from_opening: float
    from_matching: float
    matching_chance: float
    opening_share: float
    opening_steps: float


def write_sources(states: Any, texts: list[str], units: list[int]) -> list[WriteSources]:
    """Decompose the LSTM's ``c`` into per-step writes and ask, at each closing bracket, which
    earlier step wrote what the unit holds (see :class:`WriteSources`)."""
    dec = rnnlens.decompose(states, "lstm", field="c")
    top, _ = dec.top_k(1)  # (sample, time, unit, 1): the step of the largest |contribution|
    openers = np.array([[ch == "(" for ch in t] for t in texts])
    matching = np.full(openers.shape, -1)  # for each ")", the step of the "(" it closes
    for i, text in enumerate(texts):
        stack: list[int] = []
        for t, ch in enumerate(text):
            if ch == "(":
                stack.append(t)
            elif ch == ")":
                matching[i, t] = stack.pop()
    rows, steps = np.nonzero(matching >= 0)
    seen = np.cumsum(openers, axis=1)  # opening brackets up to each step
    # |contribution| of every earlier step, at every closing bracket (one decompose.at per step)
    shares: dict[int, list[float]] = {u: [] for u in units}
    for t in np.unique(steps):
        a = np.abs(dec.at(int(t)))  # (sample, t + 1, unit)
        at_t = rows[steps == t]
        for u in units:
            part = a[at_t, :, u]
            shares[u].extend(((part * openers[at_t, : t + 1]).sum(1) / part.sum(1)).tolist())
    out = []
    for u in units:
        src = top[rows, steps, u, 0]
        out.append(WriteSources(
            unit=u, closers=int(rows.size),
            from_opening=float(openers[rows, src].mean()),
            from_matching=float((src == matching[rows, steps]).mean()),
            matching_chance=float((1.0 / seen[rows, steps]).mean()),
            opening_share=float(np.mean(shares[u])),
            opening_steps=float((seen[rows, steps] / (steps + 1)).mean()),
        ))  # fmt: skip
    return out


def _closing_probability(outputs: np.ndarray, ids: np.ndarray) -> float:
    """Mean probability the model gives ")" where the next character is ")"."""
    close = VOCAB.index(")")
    where = ids[:, 1:] == close
    return float(outputs[:, :-1, close][where].mean())


def _ablate(model: object, ids: np.ndarray, units: list[tuple[str, int, float]]) -> float:
    """p(")") with ``units`` of the LSTM set to 0 at every step (rnnlens.intervene)."""
    edits = [
        rnnlens.Edit("lstm", slice(None), field=field, units=[u for f, u, _ in units if f == field], set=0.0)
        for field in ("h", "c")
        if any(f == field for f, _, _ in units)
    ]
    return _closing_probability(rnnlens.intervene(model, ids, edits).outputs, ids)


def _source_lines(sources: list[WriteSources]) -> list[tuple[str, str]]:
    return [
        (
            f"lstm.c[{s.unit}], {s.closers} closing brackets",
            f"largest write from an opening bracket {s.from_opening:.0%}, from the one it closes "
            f"{s.from_matching:.0%} (any earlier one at random: {s.matching_chance:.0%}); "
            f"{s.opening_share:.0%} of |c| written at opening brackets ({s.opening_steps:.0%} of steps)",
        )
        for s in sources
    ]


def _findings(
    ranked: list[tuple[str, int, float]],
    baseline: float,
    depth_probe: Any,
    closing: tuple[Any, ...],
    sources: list[WriteSources],
) -> list[tuple[str, list[tuple[str, str]]]]:
    """What the terminal prints, as the report's tables: the top units, the probe, the ablation,
    the decomposition."""
    intact, ablated, random_effects = closing
    lo, hi, median = min(random_effects), max(random_effects), float(np.median(random_effects))
    units = [(f"lstm.{f}[{u}]", f"r = {r:+.3f}") for f, u, r in ranked[:5]]
    units.append(("a random unit of the layer", f"median |r| = {baseline:.3f}"))
    return [
        ("Units that track bracket depth (Pearson r over all held-out steps)", units),
        (
            "A logistic probe for depth on c (held out, against a control task)",
            [
                ("held-out accuracy", f"{depth_probe.score:.3f}"),
                ("control task", f"{depth_probe.control_score:.3f}"),
                ("selectivity", f"{depth_probe.selectivity:+.3f}"),
            ],
        ),
        (
            'Ablating them (rnnlens.intervene, set to 0 at every step): p(")") where ")" comes next',
            [
                ("intact model", f"{intact:.3f}"),
                ("3 top depth units ablated", f"{ablated:.3f}"),
                ("3 random units ablated", f"{median:.3f} (median of 5 draws, {lo:.3f}-{hi:.3f})"),
            ],
        ),
        (
            "Where the depth units' c came from at closing brackets (rnnlens.decompose)",
            _source_lines(sources),
        ),
    ]


def run_demo(
    *,
    units: int = 32,
    epochs: int = 6,
    seed: int = 0,
    verbose: bool = True,
    report: str | os.PathLike[str] | None = None,
) -> DemoResult:
    """Train, trace and report. Returns the numbers it printed; writes an HTML report to
    ``report`` when given."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = require("keras", purpose="The demo (a Keras model)")

    keras.utils.set_random_seed(seed)
    train = encode(make_corpus(3000, 40, seed=seed))
    held_out_texts = make_corpus(200, 40, seed=seed + 1)
    held_out = encode(held_out_texts)

    inp = keras.Input((None,), dtype="int32", name="chars")
    h = keras.layers.Embedding(len(VOCAB), 8, name="embed")(inp)
    h = keras.layers.LSTM(units, return_sequences=True, name="lstm")(h)
    out = keras.layers.Dense(len(VOCAB), activation="softmax", name="next_char")(h)
    model = keras.Model(inp, out, name="bracket_lm")
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train[:, :-1], train[:, 1:], batch_size=64, epochs=epochs, verbose=0)
    accuracy = float(model.evaluate(held_out[:, :-1], held_out[:, 1:], verbose=0)[1])

    states = rnnlens.trace(model, held_out)
    depth = np.stack([depth_of(t) for t in held_out_texts])
    ranked: list[tuple[str, int, float]] = []
    for field in ("h", "c"):
        r = rnnlens.rank_units(states, depth, layer="lstm", field=field, permutations=0).scores
        ranked.extend((field, int(u), float(r[u])) for u in range(len(r)))
    ranked.sort(key=lambda item: -abs(item[2]))
    # a diagnostic probe for depth on c, against the control task (a random depth per character)
    depth_probe = rnnlens.probe(states, depth, layer="lstm", field="c", types=held_out, seed=seed)
    # Baseline: how well a unit picked at random from the same layer tracks depth.
    baseline = float(np.median([abs(r_value) for _, _, r_value in ranked]))
    # Causal check: ablate the 3 best depth units, and 3 random other units (5 draws), and see
    # what happens to the model's predictions of closing brackets.
    intact = _closing_probability(np.asarray(model.predict(held_out, verbose=0)), held_out)
    top = ranked[:3]
    chosen = {(f, u) for f, u, _ in top}
    others = [item for item in ranked if (item[0], item[1]) not in chosen]
    rng = np.random.default_rng(seed)
    random_effects = [
        _ablate(model, held_out, [others[i] for i in rng.choice(len(others), size=3, replace=False)])
        for _ in range(5)
    ]
    closing = (intact, _ablate(model, held_out, top), random_effects)
    # Which earlier step wrote what a depth unit holds when a bracket closes: the exact
    # per-step decomposition of c (rnnlens.decompose), at every ")" of the held-out text.
    sources = write_sources(states, held_out_texts, [u for f, u, _ in ranked if f == "c"][:3])

    if verbose:
        print(states)
        print(f"\nNext-character accuracy on held-out text: {accuracy:.3f}")
        print("Units that track bracket depth (Pearson r over all held-out steps):")
        for field, unit, r_value in ranked[:5]:
            print(f"  lstm.{field}[{unit:>2}]  r = {r_value:+.3f}")
        print(f"  a random unit of the layer: median |r| = {baseline:.3f}")
        print(
            f"  a logistic probe for depth on c: held-out accuracy {depth_probe.score:.3f}, control task "
            f"{depth_probe.control_score:.3f}, selectivity {depth_probe.selectivity:+.3f}"
        )
        lo, hi = min(closing[2]), max(closing[2])
        print('\nAblating them (rnnlens.intervene, set to 0 at every step): p(")") where ")" comes next')
        print(f"  intact model              {closing[0]:.3f}")
        print(f"  3 top depth units ablated {closing[1]:.3f}")
        median = float(np.median(closing[2]))
        print(f"  3 random units ablated    {median:.3f} (median of 5 draws, {lo:.3f}-{hi:.3f})")
        print("\nWhere the depth units' c came from at closing brackets (rnnlens.decompose):")
        for label, finding in _source_lines(sources):
            print(f"  {label}: {finding}")
        text = held_out_texts[0]
        field, unit, _ = ranked[0]
        trace = getattr(states["lstm"], field)[0, :, unit]
        print(f"\nlstm.{field}[{unit}] along one held-out string:")
        print("  text  " + " ".join(f"{ch:>5}" for ch in text[:16]))
        print("  depth " + " ".join(f"{d:>5d}" for d in depth[0, :16]))
        print("  unit  " + " ".join(f"{v:>+5.2f}" for v in trace[:16]))
    if report is not None:
        html_report(
            report,
            states["lstm"],
            texts=held_out_texts,
            units=ranked[:4],
            title="rnnlens demo: units that count brackets",
            notes=(
                f"A {units}-unit character LSTM trained for {epochs} epochs on generated bracketed text "
                f"(next-character accuracy {accuracy:.3f}). Units ranked by |Pearson r| with the "
                f"nesting depth over held-out text; a random unit of the layer reaches a median "
                f"|r| of {baseline:.3f}."
            ),
            results=_findings(ranked, baseline, depth_probe, closing, sources),
        )
        if verbose:
            print(f"\nReport: {os.fspath(report)}")
    return DemoResult(held_out_texts, depth, states, ranked[:10], baseline, accuracy, closing, sources)
