"""The seven expression classes (RAF-DB order) and maps from other datasets' label orders.

Every map is ``{the dataset's own label number: RAF-DB index 0..6}`` (the index into :data:`CLASSES`).
Numbers a dataset has beyond the 7 basic classes (AffectNet's 7 Contempt, 8 None, ...) are not in
the map; readers count those images as not used.
"""

from __future__ import annotations

# RAF-DB order: the order of the head's 7 outputs everywhere in this project.
CLASSES: tuple[str, ...] = ("Surprise", "Fear", "Disgust", "Happy", "Sad", "Angry", "Neutral")
NUM_CLASSES = len(CLASSES)

# RAF-DB basic, EmoLabel/list_patition_label.txt: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness,
# 6 Anger, 7 Neutral (the RAF-DB README; Li, Deng & Du, CVPR 2017) -> RAF-DB ids: the label minus 1.
RAFDB_LABEL_TO_INDEX: dict[int, int] = {label: label - 1 for label in range(1, NUM_CLASSES + 1)}

# FER2013 (Kaggle "Challenges in Representation Learning: Facial Expression Recognition", fer2013.csv column
# "emotion"): 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral -> RAF-DB ids.
FER2013_TO_RAFDB: dict[int, int] = {0: 5, 1: 2, 2: 1, 3: 3, 4: 4, 5: 0, 6: 6}

# AffectNet native ids (0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger; Mollahosseini et al.,
# IEEE TAC 2017, and the "expression" column of training.csv / validation.csv) -> RAF-DB ids.
AFFECTNET_TO_RAFDB: dict[int, int] = {0: 6, 1: 3, 2: 4, 3: 0, 4: 1, 5: 2, 6: 5}
# AffectNet ids that are not one of the 7 basic classes: their images are counted as not used.
AFFECTNET_NOT_7_CLASSES: dict[int, str] = {7: "contempt", 8: "none", 9: "uncertain", 10: "no-face"}

# Folder datasets whose class folders sort alphabetically
# (Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise; SFEW 2.0, MMA) -> RAF-DB ids.
ALPHABETICAL_TO_RAFDB: dict[int, int] = {0: 5, 1: 2, 2: 1, 3: 3, 4: 6, 5: 4, 6: 0}

# Numbered class folders ("0".."6" or "1".."7"): the numbering is the dataset's, never guessed.
NUMBERED_CLASS_MAPS: dict[str, dict[int, int]] = {
    "fer2013": FER2013_TO_RAFDB,
    "rafdb": RAFDB_LABEL_TO_INDEX,
    "affectnet": AFFECTNET_TO_RAFDB,
}
# Folder numbers of a numbering that exist but are not one of the 7 classes -> what they are.
NUMBERED_NOT_USED: dict[str, dict[int, str]] = {"affectnet": AFFECTNET_NOT_7_CLASSES}

# Every value ``--class-map`` takes by name; a comma-separated list of 7 expression names is the other form.
CLASS_MAP_CHOICES: tuple[str, ...] = ("names", "alphabetical", *NUMBERED_CLASS_MAPS)

# Names a site may use for its class folders or CSV labels, lower-cased -> RAF-DB id.
_ALIASES: dict[str, int] = {
    "surprise": 0, "surprised": 0,
    "fear": 1, "fearful": 1, "afraid": 1, "scared": 1,
    "disgust": 2, "disgusted": 2,
    "happy": 3, "happiness": 3, "joy": 3,
    "sad": 4, "sadness": 4,
    "angry": 5, "anger": 5,
    "neutral": 6, "calm": 6,
}


def class_index(name: str) -> int:
    """Map a class name (any case, common synonyms) to its RAF-DB index; raise ValueError if unknown."""
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    raise ValueError(
        f"unknown expression class {name!r}; expected one of {', '.join(CLASSES)}"
    )


def numbering_text(numbering: str) -> str:
    """A numbering of :data:`NUMBERED_CLASS_MAPS` in words, e.g. "0 Angry, 1 Disgust, ... 6 Neutral"."""
    mapping = NUMBERED_CLASS_MAPS[numbering]
    text = ", ".join(f"{n} {CLASSES[c]}" for n, c in sorted(mapping.items()))
    not_used = NUMBERED_NOT_USED.get(numbering, {})
    if not_used:
        text += "; " + ", ".join(f"{n} {what}" for n, what in sorted(not_used.items())) + " not used"
    return text


def class_map_options() -> str:
    """What ``--class-map`` accepts, in words (used in help texts and error messages)."""
    numbered = "; ".join(f"'{name}' ({numbering_text(name)})" for name in NUMBERED_CLASS_MAPS)
    return ("'names' (folder names are expressions), 'alphabetical' (7 expression folders sorted A..Z: Angry, "
            f"Disgust, Fear, Happy, Neutral, Sad, Surprise; SFEW, MMA), {numbered}, or the 7 expressions of folders "
            "0..6 in numeric order, comma-separated (e.g. angry,disgust,fear,happy,sad,surprise,neutral)")


def parse_class_map(text: str) -> str | dict[int, int]:
    """A ``--class-map`` value -> "names", "alphabetical", or a numbered map {folder number: RAF-DB index}.

    ``text``: one of :data:`CLASS_MAP_CHOICES` (any case), or 7 comma-separated expression names
    (:func:`class_index` names: any case, common synonyms) giving the classes of folders 0, 1, ..., 6
    in that order, each class exactly once.
    Raises ValueError naming what is wrong (an unknown keyword or expression name, a list of the
    wrong length, a class given twice) and listing the accepted values.
    """
    key = text.strip().lower()
    if key in ("names", "alphabetical"):
        return key
    if key in NUMBERED_CLASS_MAPS:
        return dict(NUMBERED_CLASS_MAPS[key])
    if "," not in key:
        raise ValueError(f"unknown class map {text!r}; expected {class_map_options()}")
    names = [n.strip() for n in text.split(",")]
    unknown = [n for n in names if n.lower() not in _ALIASES]
    if unknown:
        raise ValueError(f"class map {text!r}: {', '.join(map(repr, unknown))} "
                         f"{'is not an expression' if len(unknown) == 1 else 'are not expressions'} "
                         f"(expected names of {', '.join(CLASSES)}, any case)")
    if len(names) != NUM_CLASSES:
        raise ValueError(f"class map {text!r} names {len(names)} classes; a list gives the expressions of folders "
                         f"0..6 in order, so it needs exactly {NUM_CLASSES}")
    indices = [class_index(n) for n in names]
    twice = [CLASSES[c] for c in sorted(set(indices)) if indices.count(c) > 1]
    if twice:
        missing = [CLASSES[c] for c in range(NUM_CLASSES) if c not in indices]
        raise ValueError(f"class map {text!r} gives {', '.join(twice)} more than once "
                         f"(and {', '.join(missing)} never); each of the 7 classes must appear once")
    return dict(enumerate(indices))
