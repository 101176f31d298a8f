"""Demo file names that imitate real Clotho's: spaces, punctuation, HTML entities, CSV/disk mismatches."""

from __future__ import annotations

import html

import numpy as np

from utils.demo.captions import _pick
from utils.demo.specs import ClipSpec

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
