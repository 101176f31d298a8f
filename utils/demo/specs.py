"""Demo clip attributes: the sound sources, their attribute values, and the plan of which clips get which."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PITCHES = ("low", "medium", "high")
MOVEMENTS = ("steady", "rising", "falling")
RHYTHMS = ("continuous", "slow", "fast")
DYNAMICS = ("quiet", "loud", "fade_in", "fade_out")


@dataclass(frozen=True)
class SourceKind:
    """Which attribute values a sound source can take."""

    pitches: tuple[str | None, ...]
    movements: tuple[str, ...]
    rhythms: tuple[str, ...]
    weight: float  # share of the clips with this main source


SOURCES: dict[str, SourceKind] = {
    "whistle": SourceKind(PITCHES, MOVEMENTS, RHYTHMS, 0.20),  # pure sine tone
    "buzz": SourceKind(PITCHES, MOVEMENTS, RHYTHMS, 0.18),  # band-limited sawtooth
    "bell": SourceKind(PITCHES, MOVEMENTS, ("slow", "fast"), 0.16),  # struck, decaying inharmonic partials
    "chirps": SourceKind(PITCHES, ("rising", "falling"), ("slow", "fast"), 0.14),  # short sweeps
    "clicks": SourceKind(("low", "high"), ("steady",), ("slow", "fast"), 0.12),  # resonant impulses
    "hiss": SourceKind((None,), ("steady",), RHYTHMS, 0.10),  # white noise
    "rumble": SourceKind((None,), ("steady",), ("continuous", "slow"), 0.10),  # low-passed brown noise
}
# Steady background layers: (source, pitch).
BACKGROUNDS: tuple[tuple[str, str | None], ...] = (
    ("rumble", None), ("hiss", None), ("whistle", "high"), ("buzz", "low"))
FEW_COMBOS = ("clicks", "hiss", "rumble")  # sources whose combinations always enumerate the backgrounds
BACKGROUND_PROB = 0.25  # chance of a background layer for the other sources


@dataclass(frozen=True)
class Layer:
    """One sound layer."""

    source: str  # key of SOURCES
    pitch: str | None  # 'low' | 'medium' | 'high'; None for noise
    movement: str  # 'steady' | 'rising' | 'falling'
    rhythm: str  # 'continuous' | 'slow' | 'fast'


@dataclass(frozen=True)
class ClipSpec:
    """Everything a clip's audio and captions are made from."""

    main: Layer
    dynamics: str  # 'quiet' | 'loud' | 'fade_in' | 'fade_out'
    background: Layer | None = None  # steady, continuous, quieter layer


def _background_options(main: Layer) -> list[Layer]:
    """Backgrounds that differ from ``main`` in source and register."""
    options = []
    for source, pitch in BACKGROUNDS:
        if source == main.source or (pitch is not None and pitch == main.pitch):
            continue
        if source == "buzz" and main.source == "rumble":
            continue
        options.append(Layer(source, pitch, "steady", "continuous"))
    return options


def _combos(source: str) -> list[ClipSpec]:
    """All attribute combinations of a main source (with every background for the sparse sources)."""
    kind = SOURCES[source]
    specs = []
    for pitch in kind.pitches:
        for movement in kind.movements:
            for rhythm in kind.rhythms:
                for dynamics in DYNAMICS:
                    main = Layer(source, pitch, movement, rhythm)
                    backgrounds = [None] + _background_options(main) if source in FEW_COMBOS else [None]
                    specs.extend(ClipSpec(main, dynamics, bg) for bg in backgrounds)
    return specs


def _source_counts(n_clips: int) -> dict[str, int]:
    """Clips per main source, proportional to the weights (largest remainder)."""
    names = list(SOURCES)
    raw = np.array([SOURCES[s].weight for s in names]) * n_clips / sum(SOURCES[s].weight for s in names)
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n_clips - counts.sum()]:
        counts[i] += 1
    return dict(zip(names, counts.tolist(), strict=True))


def all_specs() -> list[ClipSpec]:
    """Every attribute set a clip can have (main source x attributes x dynamics x background)."""
    specs = []
    for source in SOURCES:
        for spec in _combos(source):
            specs.append(spec)
            if source not in FEW_COMBOS:
                specs += [ClipSpec(spec.main, spec.dynamics, bg) for bg in _background_options(spec.main)]
    return specs


def plan_specs(n_clips: int, rng: np.random.Generator) -> list[ClipSpec]:
    """``n_clips`` attribute sets, each source's combinations drawn without replacement (cycling)."""
    specs: list[ClipSpec] = []
    for source, count in _source_counts(n_clips).items():
        pool: list[ClipSpec] = []
        for _ in range(count):
            if not pool:
                combos = _combos(source)
                pool = [combos[i] for i in rng.permutation(len(combos))]
            spec = pool.pop()
            if spec.background is None and source not in FEW_COMBOS and rng.random() < BACKGROUND_PROB:
                options = _background_options(spec.main)
                spec = ClipSpec(spec.main, spec.dynamics, options[rng.integers(len(options))])
            specs.append(spec)
    return [specs[i] for i in rng.permutation(len(specs))]
