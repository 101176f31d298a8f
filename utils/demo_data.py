"""A built-in demo dataset in the Clotho v2.1 layout, synthesized so that its captions describe its sounds.

:func:`make_demo_dataset` writes::

    <out_dir>/clotho_captions_{development,validation,evaluation}.csv   # file_name,caption_1..caption_5
    <out_dir>/{development,validation,evaluation}/*.wav                  # 16-bit PCM, 5-15 s
    <out_dir>/demo_manifest.json                                         # parameters + per-clip attributes

Each clip is a :class:`ClipSpec` drawn from the seed: a main sound (source, pitch, pitch movement, rhythm),
its dynamics (quiet, loud, fading in or out) and sometimes a steady background layer. The audio is
synthesized from those attributes with numpy and the five captions are paraphrases of the same attributes,
so text->audio retrieval is learnable by a small CNN on log-mel features.

File names imitate real Clotho's: some contain spaces, commas, parentheses, ``#``, apostrophes and
ampersands; a few are spelled with HTML entities or stray spaces in the CSV (or on disk). They all match
after :func:`canonical_name` on both sides. Same seed and parameters -> byte-identical CSVs and audio.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from utils.config import CLOTHO_SPLITS, ConfigError
from utils.errors import DataError
from utils.tables import atomic_path

MANIFEST = "demo_manifest.json"  # written last: its presence means the dataset is complete
IN_PROGRESS = ".demo_in_progress.json"  # lists the files a running generation writes
FORMAT_VERSION = 1  # bump when the generated content changes, so old demo datasets are regenerated
CSV_HEADER = ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # development / validation / evaluation
ALT_SAMPLE_RATES = (22050, 44100)  # a few clips use these instead of the requested rate
MIN_SAMPLE_RATE = 12000  # Hz; keeps every synthesized tone below Nyquist

# --------------------------------------------------------------------------------------------
# Attributes
# --------------------------------------------------------------------------------------------

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


@dataclass
class DemoClip:
    """One planned clip: where it goes, what it sounds like and how it is described."""

    index: int
    split: str
    disk_name: str  # file name on disk
    csv_name: str  # file name as spelled in the captions CSV
    spec: ClipSpec
    captions: list[str]  # five paraphrases
    duration: float  # seconds
    sample_rate: int  # Hz
    channels: int  # 1 or 2


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


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

PITCH_ADJ = {"low": ("low", "low-pitched", "deep"), "medium": ("medium-pitched", "mid-pitched", "mid-range"),
             "high": ("high", "high-pitched", "shrill")}
CLICK_ADJ = {"low": ("dull", "low", "deep", "muffled"), "high": ("sharp", "high", "crisp", "high-pitched")}
DYN_ADJ = {"quiet": ("quiet", "soft", "faint"), "loud": ("loud", "powerful", "very loud")}
NOUNS = {
    "whistle": ("whistle", "pure tone", "whistling tone", "sine tone", "clear tone"),
    "buzz": ("buzzer", "buzzing tone", "harsh buzz", "electronic buzz", "raspy buzzing sound"),
    "bell": ("bell", "chime", "small bell", "metallic bell"),
    "chirps": ("chirps", "chirping sounds", "bird-like chirps", "short chirps"),
    "clicks_low": ("knocks", "thuds", "thumps", "knocking sounds"),
    "clicks_high": ("clicks", "ticks", "taps", "ticking sounds"),
    "hiss": ("hiss", "hissing noise", "static noise", "white noise", "rush of static"),
    "rumble": ("rumble", "rumbling noise", "deep rumble", "low roar"),
}
PLURAL = {"chirps", "clicks"}
CHIRP_ADJ = {"rising": ("rising", "upward", "up-sweeping"), "falling": ("falling", "downward", "down-sweeping")}

# Verb phrases in the base form; {verb} is conjugated to the subject ('sg', 'pl' or 'ing').
TONE_CONTINUOUS = {
    "steady": ("{hold} a steady pitch", "{stay} on one steady note", "{drone} on at a constant pitch",
               "{sound} continuously at the same pitch", "{hum} steadily without changing pitch"),
    "rising": ("{rise} steadily in pitch", "{climb} higher and higher in pitch", "{sweep} slowly upward in pitch",
               "{glide} upward in pitch", "{go} up in pitch continuously"),
    "falling": ("{fall} steadily in pitch", "{drop} lower and lower in pitch", "{sweep} slowly downward in pitch",
                "{glide} downward in pitch", "{go} down in pitch continuously"),
}
PULSED = {
    "whistle": {"fast": ("{beep} rapidly", "{beep} quickly", "{pulse} quickly on and off", "{repeat} in fast, short beeps"),
                "slow": ("{beep} slowly", "{pulse} slowly on and off", "{repeat} in slow, long beeps",
                         "{beep} at a slow pace")},
    "buzz": {"fast": ("{sound} in rapid bursts", "{pulse} quickly on and off", "{stutter} rapidly",
                      "{pulse} rapidly"),
             "slow": ("{sound} in slow bursts", "{pulse} slowly on and off", "{switch} on and off slowly",
                      "{pulse} slowly")},
    "bell": {"fast": ("{ring} rapidly", "{chime} quickly over and over", "{ring} in quick succession"),
             "slow": ("{ring} slowly", "{chime} at a slow pace", "{ring} out every second or so")},
    "chirps": {"fast": ("{repeat} rapidly", "{come} in quick succession", "{sound} quickly one after another"),
               "slow": ("{repeat} slowly", "{come} at a slow pace", "{sound} with long gaps between them")},
    "clicks": {"fast": ("{tick} rapidly like a clock", "{repeat} quickly and evenly", "{come} in fast succession"),
               "slow": ("{tick} slowly and evenly", "{repeat} at a slow pace", "{come} with long gaps in between")},
    "hiss": {"continuous": ("{continue} steadily without a break", "{go} on constantly", "{hiss} on without stopping",
                            "{fill} the air without pausing"),
             "fast": ("{come} in short, rapid bursts", "{pulse} quickly on and off", "{sputter} rapidly"),
             "slow": ("{come} and {go} in slow bursts", "{pulse} slowly on and off", "{surge} slowly on and off")},
    "rumble": {"continuous": ("{roll} on steadily", "{go} on without a break", "{keep} going constantly",
                              "{continue} without stopping"),
               "slow": ("{swell} up and down in slow waves", "{pulse} slowly on and off", "{come} and {go} slowly")},
}
MOVE_MOD = {  # pitch movement of pulsed sounds, appended to the verb phrase
    "steady": (" at a constant pitch", " on the same note", " without changing pitch", " at one steady pitch",
               " on one note", "", ""),  # steady pitch is sometimes left unsaid, as people do
    "rising": (" while rising in pitch", ", getting higher in pitch", " as the pitch climbs", " with the pitch going up",
               " and {rise} in pitch", " and {climb} in pitch"),
    "falling": (" while falling in pitch", ", getting lower in pitch", " as the pitch drops",
                " with the pitch going down", " and {fall} in pitch", " and {drop} in pitch"),
}
CHIRP_MOD = {"rising": (", each one sweeping upward", ", each rising in pitch"),
             "falling": (", each one sweeping downward", ", each falling in pitch")}
DYN_TAIL = {
    "quiet": (", very quietly", ", barely audible", ", very softly", ", softly and faintly"),
    "loud": (", very loudly", ", loud and clear", ", at full volume", ", quite loudly"),
    "fade_in": (" and gradually {get} louder", " and slowly {grow} louder", " and {fade} in over time",
                " and {become} louder and louder", " and {grow} louder", ", fading in"),
    "fade_out": (" and slowly {fade} away", " and gradually {die} out", " and {get} quieter and quieter",
                 " before fading away", " and {fade} out", ", fading away"),
}
BG_NP = {"rumble": ("a low rumble", "a deep rumbling", "a low rumbling noise"),
         "hiss": ("a soft hiss", "a constant hiss", "steady static"),
         "whistle": ("a steady high whistle", "a constant high-pitched tone", "a high whistle"),
         "buzz": ("a low hum", "a deep electrical hum", "a low droning buzz")}
BG_VERB = ("continues", "goes on", "carries on")
BG_WHERE = ("in the background", "underneath", "throughout")
OPENERS = {  # sentence frames; {np} subject, {vp} verb phrase + tails; 'ing' frames need the -ing form
    "sg": ("{NP} {vp}.", "There is {np} that {vp}.", "In this recording, {np} {vp}.",
           "Throughout the clip, {np} {vp}.", "A recording of {np} that {vp}."),
    "pl": ("{NP} {vp}.", "There are {np} that {vp}.", "In this recording, {np} {vp}.",
           "Throughout the clip, {np} {vp}.", "A recording of {np} that {vp}."),
    "ing": ("You can hear {np} {vp}.", "{NP} can be heard {vp}.", "Listen to {np} {vp}."),
}
MIN_WORDS, MAX_WORDS = 8, 20
_IRREGULAR = {"sg": {"be": "is", "go": "goes"}, "ing": {"be": "being", "die": "dying"}}
_DOUBLE_FINAL = {"drop", "get", "hum", "stop", "tap", "throb"}


def conjugate(verb: str, form: str) -> str:
    """``('rise', 'sg') -> 'rises'``, ``('rise', 'ing') -> 'rising'``, ``('rise', 'pl') -> 'rise'``."""
    if form == "pl":
        return verb
    if verb in _IRREGULAR[form]:
        return _IRREGULAR[form][verb]
    if form == "sg":
        if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
            return verb + "es"
        if verb.endswith("y") and verb[-2] not in "aeiou":
            return verb[:-1] + "ies"
        return verb + "s"
    if verb in _DOUBLE_FINAL:
        return verb + verb[-1] + "ing"
    if verb.endswith("e") and not verb.endswith("ee"):
        return verb[:-1] + "ing"
    return verb + "ing"


def _fill(phrase: str, form: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: conjugate(m.group(1), form), phrase)


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(spec: ClipSpec, rng: np.random.Generator, with_dyn_adj: bool) -> str:
    """E.g. 'a faint, high-pitched whistle' or 'rising chirps'."""
    main = spec.main
    adjs = []
    if with_dyn_adj:
        adjs.append(_pick(rng, DYN_ADJ[spec.dynamics]))
    if main.source == "clicks":
        adjs.append(_pick(rng, CLICK_ADJ[main.pitch]))
        noun = _pick(rng, NOUNS[f"clicks_{main.pitch}"])
    else:
        if main.pitch is not None:
            adjs.append(_pick(rng, PITCH_ADJ[main.pitch]))
        noun = _pick(rng, NOUNS[main.source])
    if main.source == "chirps" and rng.random() < 0.5:
        noun = f"{_pick(rng, CHIRP_ADJ[main.movement])} {noun}"  # 'rising chirps'
    text = f"{', '.join(adjs)} {noun}" if adjs else noun
    if main.source in PLURAL:
        return text
    return ("an " if text[0] in "aeiou" else "a ") + text


def _verb_phrase(spec: ClipSpec, rng: np.random.Generator, np_text: str) -> str:
    """Verb phrase (with {verb} slots) describing rhythm and pitch movement."""
    main = spec.main
    if main.source in ("whistle", "buzz") and main.rhythm == "continuous":
        return _pick(rng, TONE_CONTINUOUS[main.movement])
    phrase = _pick(rng, PULSED[main.source][main.rhythm])
    if main.source == "chirps":
        said = any(word in np_text for word in CHIRP_ADJ[main.movement])
        return phrase + ("" if said else _pick(rng, CHIRP_MOD[main.movement]))
    if main.pitch is not None and main.source != "clicks":
        phrase += _pick(rng, MOVE_MOD[main.movement])
    return phrase


def _background_tail(layer: Layer, rng: np.random.Generator) -> str:
    noun = _pick(rng, BG_NP[layer.source])
    where = _pick(rng, BG_WHERE)
    style = int(rng.integers(4))
    if style == 0:
        return f" while {noun} {_pick(rng, BG_VERB)} {where}"
    if style == 1:
        return f", with {noun} {where}"
    if style == 2:
        return f" over {noun}"
    return f". In the background, {noun} {_pick(rng, BG_VERB)}"


def _one_caption(spec: ClipSpec, rng: np.random.Generator) -> str:
    form = "pl" if spec.main.source in PLURAL else "sg"
    if rng.random() < 0.35:
        form = "ing"
    dyn_adj = spec.dynamics in DYN_ADJ and (form == "ing" or rng.random() < 0.5)
    np_text = _noun_phrase(spec, rng, dyn_adj)
    vp = _verb_phrase(spec, rng, np_text)
    if not dyn_adj:
        vp += _pick(rng, DYN_TAIL[spec.dynamics])
    if spec.background is not None:
        vp += _background_tail(spec.background, rng)
    frame = _pick(rng, OPENERS[form])
    text = frame.format(NP=np_text[0].upper() + np_text[1:], np=np_text, vp=_fill(vp, form))
    return text[0].upper() + text[1:]


def _caption_ok(text: str, taken: list[str]) -> bool:
    lower = text.lower()
    repeats = any(lower.count(word) > 1 for word in (" while ", "throughout")) or lower.count(" and ") > 2
    return MIN_WORDS <= len(text.split()) <= MAX_WORDS and not repeats and text not in taken


def make_captions(spec: ClipSpec, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` different paraphrases of ``spec``, each 8-20 words."""
    captions: list[str] = []
    for _ in range(400 * n):
        text = _one_caption(spec, rng)
        if _caption_ok(text, captions):
            captions.append(text)
            if len(captions) == n:
                return captions
    raise RuntimeError(f"could not write {n} distinct captions for {spec}")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Synthesis: every function returns a float64 array of shape (samples,)
# --------------------------------------------------------------------------------------------

PITCH_HZ = {"low": 180.0, "medium": 700.0, "high": 2800.0}  # centre frequency of a tonal source
CLICK_HZ = {"low": 220.0, "high": 3500.0}  # resonance of a click
SWEEP_RATIO = 1.6  # rising/falling sweeps go from centre / ratio to centre * ratio
CHIRP_RATIO = 1.8  # each chirp sweeps from centre / ratio to centre * ratio (or back)
PULSE_HZ = {"slow": 1.2, "fast": 5.0}  # on/off pulses per second
STRIKE_HZ = {"slow": 1.0, "fast": 3.5}  # bell strikes per second
CHIRP_HZ = {"slow": 1.5, "fast": 6.0}  # chirps per second
BELL_PARTIALS = ((1.0, 1.0, 1.0), (2.0, 0.6, 0.7), (3.0, 0.4, 0.5), (4.2, 0.25, 0.35), (5.4, 0.2, 0.25))  # ratio, amp, decay
CLICK_RATE_HZ = {"slow": 2.0, "fast": 9.0}  # clicks per second
PEAK = {"quiet": 0.05, "loud": 0.7, "fade_in": 0.6, "fade_out": 0.6}  # peak amplitude of the main layer
FADE_DB = 45.0  # a fade spans this many dB over the clip
BACKGROUND_REL = 0.3  # background peak relative to the main layer's peak
FLOOR_RMS = 0.001  # white-noise floor (-60 dBFS) so no clip is digitally silent


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _freq_track(centre: float, movement: str, n: int) -> np.ndarray:
    """Instantaneous frequency (Hz) per sample: constant or an exponential sweep through ``centre``."""
    if movement == "steady":
        return np.full(n, centre)
    u = np.linspace(-1.0, 1.0, n)
    return centre * SWEEP_RATIO ** (u if movement == "rising" else -u)


def _gate(rate: float, n: int, sr: int, rng: np.random.Generator, ramp: float = 0.008) -> np.ndarray:
    """On/off pulses (50 % duty) with linear ramps of ``ramp`` seconds."""
    phase = (_time(n, sr) * rate + rng.random()) % 1.0
    dist = np.minimum(phase, 0.5 - phase) / (ramp * rate)
    return np.clip(np.where(phase < 0.5, dist, 0.0), 0.0, 1.0)


def _tone(freq: np.ndarray, sr: int, harmonics: int) -> np.ndarray:
    """Sine (harmonics=1) or band-limited sawtooth following ``freq`` (samples,)."""
    phase = 2 * np.pi * np.cumsum(freq) / sr
    prev, cur = np.zeros_like(phase), np.sin(phase)  # sin((k-1) phase), sin(k phase)
    twice_cos = 2 * np.cos(phase) if harmonics > 1 else None
    out = cur.copy()
    for k in range(2, harmonics + 1):
        if k * freq.max() >= 0.45 * sr:
            break
        prev, cur = cur, twice_cos * cur - prev  # sin(k x) = 2 cos(x) sin((k-1) x) - sin((k-2) x)
        out += cur / k
    return out


def _events(rate: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Start samples of events repeating at ``rate`` per second, with a little timing jitter."""
    times = np.arange(rng.random() / rate, n / sr, 1.0 / rate)
    times = times + rng.normal(0, 0.03 / rate, len(times))
    return np.clip((times * sr).astype(int), 0, n - 1)


def _add_event(out: np.ndarray, start: int, wave: np.ndarray) -> None:
    end = min(len(out), start + len(wave))
    out[start:end] += wave[: end - start]


def _bell(layer: Layer, centre: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    freq = _freq_track(centre, layer.movement, n)
    decay = 0.5 if layer.rhythm == "slow" else 0.22  # seconds, of the fundamental
    partials = []  # (ratio, t, amplitude envelope); each partial lasts 5 of its own time constants
    for ratio, amp, tau in BELL_PARTIALS:
        t = _time(int(5 * tau * decay * sr), sr)
        partials.append((ratio, t, amp * np.exp(-t / (tau * decay))))
    for start in _events(STRIKE_HZ[layer.rhythm], n, sr, rng):
        gain = rng.uniform(0.8, 1.0)
        for ratio, t, env in partials:
            if ratio * freq[start] < 0.45 * sr:
                _add_event(out, start, gain * env * np.sin((2 * np.pi * ratio * freq[start]) * t))
    return out


def _chirps(layer: Layer, centre: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    length = int((0.18 if layer.rhythm == "slow" else 0.09) * sr)
    u = np.linspace(-1.0, 1.0, length)
    freq = centre * CHIRP_RATIO ** (u if layer.movement == "rising" else -u)  # (length,) Hz
    wave = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.hanning(length)
    for start in _events(CHIRP_HZ[layer.rhythm], n, sr, rng):
        _add_event(out, start, wave * rng.uniform(0.7, 1.0))
    return out


def _clicks(layer: Layer, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    freq, tau = (CLICK_HZ["high"], 0.004) if layer.pitch == "high" else (CLICK_HZ["low"], 0.03)
    t = _time(int(6 * tau * sr), sr)
    wave = np.exp(-t / tau) * np.sin(2 * np.pi * freq * t)
    for start in _events(CLICK_RATE_HZ[layer.rhythm], n, sr, rng):
        _add_event(out, start, wave * rng.uniform(0.7, 1.0))
    return out


def _rumble(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Brown (1/f amplitude) noise band-limited to about 20-150 Hz, shaped in the frequency domain."""
    freqs = np.fft.rfftfreq(n, 1 / sr)
    gain = 1 / np.maximum(freqs, 20.0) / (1 + (freqs / 150.0) ** 4)
    gain *= np.minimum(freqs / 20.0, 1.0) ** 2  # no DC, gentle roll-off below 20 Hz
    return np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * gain, n)


def synthesize_layer(layer: Layer, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One layer, peak-normalized to 1: ``(n,)`` float64."""
    centre = PITCH_HZ.get(layer.pitch or "", 0.0) * rng.uniform(0.88, 1.12)
    if layer.source in ("whistle", "buzz"):
        x = _tone(_freq_track(centre, layer.movement, n), sr, 1 if layer.source == "whistle" else 12)
    elif layer.source == "bell":
        x = _bell(layer, centre, n, sr, rng)
    elif layer.source == "chirps":
        x = _chirps(layer, centre, n, sr, rng)
    elif layer.source == "clicks":
        x = _clicks(layer, n, sr, rng)
    elif layer.source == "hiss":
        x = rng.standard_normal(n)
    elif layer.source == "rumble":
        x = _rumble(n, sr, rng)
    else:
        raise ValueError(f"unknown source {layer.source!r}; valid: {sorted(SOURCES)}")
    if layer.source in ("whistle", "buzz", "hiss", "rumble") and layer.rhythm != "continuous":
        slow_rumble = layer.source == "rumble"
        rate = 0.7 if slow_rumble else PULSE_HZ[layer.rhythm]
        x = x * _gate(rate * rng.uniform(0.9, 1.1), n, sr, rng, ramp=0.25 if slow_rumble else 0.008)
    return x / max(np.abs(x).max(), 1e-12)


def _dynamics_envelope(dynamics: str, n: int) -> np.ndarray:
    """Gain per sample: constant, or a fade of FADE_DB decibels in or out."""
    if dynamics in ("quiet", "loud"):
        return np.full(n, PEAK[dynamics])
    db = np.linspace(-FADE_DB, 0.0, n)
    env = PEAK[dynamics] * 10 ** (db / 20)
    return env if dynamics == "fade_in" else env[::-1]


def synthesize_clip(spec: ClipSpec, duration: float, sr: int, rng: np.random.Generator,
                    channels: int = 1) -> np.ndarray:
    """The clip's audio in [-1, 1]: ``(samples,)`` if mono, else ``(samples, channels)``."""
    n = int(round(duration * sr))
    x = synthesize_layer(spec.main, n, sr, rng) * _dynamics_envelope(spec.dynamics, n)
    if spec.background is not None:
        x += synthesize_layer(spec.background, n, sr, rng) * BACKGROUND_REL * PEAK[spec.dynamics]
    x = np.stack([x * g for g in (1.0, 0.8)[:channels]], axis=1)  # (samples, channels)
    x += FLOOR_RMS * rng.standard_normal(x.shape)
    x /= max(1.0, np.abs(x).max() / 0.98)
    return x[:, 0] if channels == 1 else x


# --------------------------------------------------------------------------------------------
# File names
# --------------------------------------------------------------------------------------------

NAME_WORDS = {
    "whistle": ("kettle", "whistle", "flute", "signal"), "buzz": ("buzzer", "razor", "alarm", "doorbell"),
    "bell": ("bell", "chimes", "church bell", "bike bell"), "chirps": ("birds", "sparrow", "cricket", "robin"),
    "clicks": ("clock", "keyboard", "footsteps", "metronome"), "hiss": ("steam", "radio static", "tap", "spray"),
    "rumble": ("thunder", "engine", "truck", "wind"),
}
PEOPLE = ("Tom", "Anna", "Grandpa", "Joe", "Maria", "Sam")
PLACES = ("kitchen", "garage", "park", "street", "attic", "station")
TIMES = ("morning", "night", "take 2", "raw", "edit", "loop")
# Odd styles; each puts at least the listed characters into the name.
NAME_STYLES = (
    "{Person}'s {word} & {other} {k}",  # apostrophe, ampersand, spaces
    "{Word}, {place} ({time}) #{k}",  # comma, parentheses, '#'
    "{Word} & {other}, {place} {k}",  # ampersand, comma
    "{Person}'s {word} ({place}) {k}",  # apostrophe, parentheses
    "{Place} {word} #{k}",  # '#', spaces
)
ODD_FRACTION = 0.4  # share of clips with an odd name (at least 6)
# Where the CSV and the disk disagree; each needs a character in the name (or None for any odd name).
MISMATCHES = (("disk_entity", "&"), ("csv_apos_entity", "'"), ("csv_amp_entity", "&"),
              ("disk_trailing_space", None), ("csv_spaces", None))


def canonical_name(name: str) -> str:
    """The matching key of a file name: HTML entities decoded, spaces stripped around the name and its stem."""
    name = html.unescape(name).strip()
    stem, dot, ext = name.rpartition(".")
    return f"{stem.strip()}{dot}{ext}" if dot else name


def _plain_name(spec: ClipSpec, index: int) -> str:
    main = spec.main
    word = main.movement if main.movement != "steady" else main.rhythm
    if main.source in ("hiss", "rumble", "clicks"):
        word = main.rhythm
    return f"{word}_{main.source}_{index:03d}.wav"


def _odd_name(style: str, spec: ClipSpec, index: int, rng: np.random.Generator) -> str:
    words = NAME_WORDS[spec.main.source]
    word, other = (words[i] for i in rng.permutation(len(words))[:2])
    place, person, time = _pick(rng, PLACES), _pick(rng, PEOPLE), _pick(rng, TIMES)
    text = style.format(Person=person, word=word, Word=word.capitalize(), other=other, place=place,
                        Place=place.capitalize(), time=time, k=index + 1)
    return text + ".wav"


def _mismatch(kind: str, name: str) -> tuple[str, str]:
    """(disk name, CSV name) for a name that is spelled differently in the two places."""
    stem = name[: -len(".wav")]
    if kind == "disk_entity":
        return name.replace("&", "&amp;"), name
    if kind == "csv_apos_entity":
        return name, name.replace("'", "&#39;")
    if kind == "csv_amp_entity":
        return name, name.replace("&", "&amp;")
    if kind == "disk_trailing_space":
        return f"{stem} .wav", name
    return name, f"  {name} "


def _mismatch_quota(n_clips: int) -> list[str]:
    per = max(1, n_clips // 60)
    quota = {"disk_entity": 1, "csv_apos_entity": per, "csv_amp_entity": per,
             "disk_trailing_space": max(1, n_clips // 120), "csv_spaces": per + 1}
    return [kind for kind, _ in MISMATCHES for _ in range(quota[kind])]


def plan_names(specs: list[ClipSpec], rng: np.random.Generator) -> list[tuple[str, str]]:
    """(disk name, CSV name) per clip: mostly plain, some odd, a few spelled differently in the CSV."""
    n = len(specs)
    names = [_plain_name(s, i) for i, s in enumerate(specs)]
    odd = [int(i) for i in rng.permutation(n)[: min(n, max(6, round(ODD_FRACTION * n)))]]
    for j, i in enumerate(odd):
        names[i] = _odd_name(NAME_STYLES[j % len(NAME_STYLES)], specs[i], i, rng)
    pairs = [(name, name) for name in names]
    free = list(odd)
    for kind in _mismatch_quota(n):
        needs = dict(MISMATCHES)[kind]
        match = next((i for i in free if needs is None or needs in names[i]), None)
        if match is not None:
            free.remove(match)
            pairs[match] = _mismatch(kind, names[match])
    keys = {canonical_name(csv_name).casefold() for _, csv_name in pairs}
    if len(keys) != n:
        raise RuntimeError("demo file names are not unique after canonical_name")  # pragma: no cover
    return pairs


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def split_sizes(n_clips: int) -> dict[str, int]:
    """Clips per split, about 60/20/20 (e.g. 144/48/48 for 240); every split gets at least one."""
    if n_clips < len(CLOTHO_SPLITS):
        raise ConfigError(f"need at least {len(CLOTHO_SPLITS)} clips (one per split), got {n_clips}")
    val = max(1, round(n_clips * SPLIT_FRACTIONS[1]))
    ev = max(1, round(n_clips * SPLIT_FRACTIONS[2]))
    return dict(zip(CLOTHO_SPLITS, (n_clips - val - ev, val, ev), strict=True))


def _formats(n: int, sample_rate: int) -> list[tuple[int, int]]:
    """(sample rate, channels) per clip: a few stereo, a few at another sample rate."""
    alt = [r for r in ALT_SAMPLE_RATES if r != sample_rate]
    out = []
    for i in range(n):
        channels = 2 if i % 12 == 4 else 1
        rate = alt[(i // 12) % len(alt)] if i % 12 == 8 else sample_rate
        out.append((rate, channels))
    return out


def plan_dataset(n_clips: int = 240, seed: int = 0, sample_rate: int = 16000,
                 duration_range: tuple[float, float] = (5.0, 15.0)) -> list[DemoClip]:
    """Every clip's split, names, attributes, captions, duration and format; no audio yet."""
    lo, hi = duration_range
    if sample_rate < MIN_SAMPLE_RATE:
        raise ConfigError(f"sample rate must be >= {MIN_SAMPLE_RATE} Hz (the highest tones reach 5.7 kHz), "
                          f"got {sample_rate}")
    if not 0 < lo <= hi:
        raise ConfigError(f"clip durations must satisfy 0 < min <= max seconds, got {tuple(duration_range)}")
    rng = np.random.default_rng([seed, 0])
    specs = plan_specs(n_clips, rng)
    names = plan_names(specs, rng)
    splits = [s for s, count in split_sizes(n_clips).items() for _ in range(count)]
    clips = []
    for i, (spec, (disk, csv_name), split, (sr, ch)) in enumerate(
            zip(specs, names, splits, _formats(n_clips, sample_rate), strict=True)):
        clip_rng = np.random.default_rng([seed, 1, i])
        clips.append(DemoClip(i, split, disk, csv_name, spec, make_captions(spec, clip_rng),
                              round(float(clip_rng.uniform(lo, hi)), 2), sr, ch))
    return clips


def _params(n_clips: int, seed: int, sample_rate: int, duration_range: tuple[float, float]) -> dict:
    return {"version": FORMAT_VERSION, "n_clips": n_clips, "seed": seed, "sample_rate": sample_rate,
            "duration_range": [float(duration_range[0]), float(duration_range[1])]}


def _write_json(path: Path, data: dict) -> None:
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_captions(path: Path, clips: list[DemoClip]) -> None:
    tmp = atomic_path(path)
    with open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_HEADER)
        writer.writerows([clip.csv_name, *clip.captions] for clip in clips)
    os.replace(tmp, path)


def _write_wav(out_dir: Path, clip: DemoClip, seed: int) -> int:
    """Synthesize and write one clip; returns its size in bytes."""
    rng = np.random.default_rng([seed, 2, clip.index])
    audio = synthesize_clip(clip.spec, clip.duration, clip.sample_rate, rng, clip.channels)
    path = out_dir / clip.split / clip.disk_name
    sf.write(path, audio, clip.sample_rate, subtype="PCM_16", format="WAV")
    return path.stat().st_size


def _listed_files(out_dir: Path) -> list[Path]:
    """Files that an earlier (complete or interrupted) demo generation wrote here."""
    files: list[Path] = []
    for name in (MANIFEST, IN_PROGRESS):
        path = out_dir / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise DataError(f"cannot read {path} ({err}); delete it and rerun") from err
            files += [out_dir / c["split"] / c["file"] for c in data.get("clips", [])]
    return files


def _start(out_dir: Path, params: dict, clips: list[DemoClip]) -> None:
    """Mark a generation as running, then remove what an earlier demo generation wrote.

    The in-progress marker lists the old and the new files, so a run interrupted at any point is
    cleaned up by the next one. A folder holding a dataset that is not the demo is left alone.
    """
    ours = (out_dir / MANIFEST).is_file() or (out_dir / IN_PROGRESS).is_file()
    foreign = sorted(p.name for p in out_dir.glob("clotho_captions_*.csv"))
    if foreign and not ours:
        raise DataError(f"{out_dir} already holds a dataset that is not the demo ({', '.join(foreign)}); "
                        "choose another data.dataset_dir or delete it first")
    old = _listed_files(out_dir)
    listed = [{"split": p.parent.name, "file": p.name} for p in old]
    listed += [{"split": c.split, "file": c.disk_name} for c in clips]
    _write_json(out_dir / IN_PROGRESS, {"params": params, "clips": listed})
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for path in old:
        path.unlink(missing_ok=True)


def _manifest(params: dict, clips: list[DemoClip], sizes: list[int]) -> dict:
    return {"params": params, "counts": _counts(clips), "clips": [
        {"split": c.split, "file": c.disk_name, "csv_name": c.csv_name, "bytes": size,
         "duration": c.duration, "sample_rate": c.sample_rate, "channels": c.channels,
         "attributes": asdict(c.spec)} for c, size in zip(clips, sizes, strict=True)]}


def _counts(clips: list[DemoClip]) -> dict[str, int]:
    return {split: sum(c.split == split for c in clips) for split in CLOTHO_SPLITS}


def make_demo_dataset(out_dir: str | os.PathLike, n_clips: int = 240, seed: int = 0, sample_rate: int = 16000,
                      progress: bool = True, duration_range: tuple[float, float] = (5.0, 15.0)) -> dict[str, int]:
    """Write the demo dataset into ``out_dir`` and return the number of clips per split.

    Files of an earlier demo generation in ``out_dir`` are replaced; the manifest is written last,
    so an interrupted run never looks complete (see :func:`demo_dataset_complete`).
    """
    out_dir = Path(out_dir)
    params = _params(n_clips, seed, sample_rate, duration_range)
    clips = plan_dataset(n_clips, seed, sample_rate, duration_range)
    out_dir.mkdir(parents=True, exist_ok=True)
    _start(out_dir, params, clips)
    for split in CLOTHO_SPLITS:
        (out_dir / split).mkdir(exist_ok=True)
    sizes = [_write_wav(out_dir, c, seed) for c in tqdm(clips, desc="demo clips", unit="clip", disable=not progress)]
    for split in CLOTHO_SPLITS:
        _write_captions(out_dir / f"clotho_captions_{split}.csv", [c for c in clips if c.split == split])
    _write_json(out_dir / MANIFEST, _manifest(params, clips, sizes))
    (out_dir / IN_PROGRESS).unlink()
    return _counts(clips)


def demo_dataset_complete(out_dir: str | os.PathLike, n_clips: int = 240, seed: int = 0, sample_rate: int = 16000,
                          duration_range: tuple[float, float] = (5.0, 15.0)) -> bool:
    """True if ``out_dir`` holds a finished demo dataset made with these parameters (every file present, same size)."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    if not path.is_file() or (out_dir / IN_PROGRESS).exists():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("params") != _params(n_clips, seed, sample_rate, duration_range):
        return False
    if not all((out_dir / f"clotho_captions_{s}.csv").is_file() for s in CLOTHO_SPLITS):
        return False
    for clip in manifest.get("clips", []):
        wav = out_dir / clip["split"] / clip["file"]
        if not wav.is_file() or wav.stat().st_size != clip["bytes"]:
            return False
    return len(manifest.get("clips", [])) == n_clips
