"""Demo captions: five paraphrases of a clip's attributes, from a small English grammar."""

from __future__ import annotations

import re

import numpy as np

from utils.demo.specs import ClipSpec, Layer

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
