"""The seven expression classes (RAF-DB order) and maps from other datasets' label orders."""

from __future__ import annotations

# RAF-DB order: the order of the head's 7 outputs everywhere in this project.
CLASSES: tuple[str, ...] = ("Surprise", "Fear", "Disgust", "Happy", "Sad", "Angry", "Neutral")
NUM_CLASSES = len(CLASSES)

# AffectNet native ids (0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger) -> RAF-DB ids.
AFFECTNET_TO_RAFDB: dict[int, int] = {0: 6, 1: 3, 2: 4, 3: 0, 4: 1, 5: 2, 6: 5}

# Folder datasets whose class folders sort alphabetically
# (Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise; SFEW 2.0, MMA) -> RAF-DB ids.
ALPHABETICAL_TO_RAFDB: dict[int, int] = {0: 5, 1: 2, 2: 1, 3: 3, 4: 6, 5: 4, 6: 0}

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
