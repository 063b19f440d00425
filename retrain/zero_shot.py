"""A zero-shot head from CLIP text embeddings of class prompts ("a photo of a happy face", ...).

CLIP's zero-shot classifier scores an image by the cosine between its embedding and each class's
mean prompt embedding. A linear head cannot normalise the image embedding, but the argmax is the
same for any positive per-image scale, so ``weight = unit text embeddings * scale / typical
feature norm`` ranks classes as CLIP would; ``feature_norm`` (median |masked feature| of the site)
sets the temperature. It is a starting point for sites with few labels: ``fit_head(init=...)``
pulls the fitted head towards it. Meaningful only with the real (OpenAI) CLIP weights the served
encoder uses; with random weights (tests here) it is just a well-formed head.
"""

from __future__ import annotations

import numpy as np
import torch

from fer_triton.labels import CLASSES
from fer_triton.retrain.fit import LinearHead

# Words for each class (RAF-DB order) and the prompt templates, averaged as in CLIP's zero-shot recipe.
CLASS_WORDS: dict[str, list[str]] = {
    "Surprise": ["surprised", "astonished"],
    "Fear": ["fearful", "scared"],
    "Disgust": ["disgusted", "repulsed"],
    "Happy": ["happy", "smiling"],
    "Sad": ["sad", "unhappy"],
    "Angry": ["angry", "furious"],
    "Neutral": ["neutral", "expressionless"],
}
TEMPLATES = ("a photo of a {} face.", "a close-up photo of a {} person.", "a face that looks {}.")


def class_prompts(classes: tuple[str, ...] = CLASSES) -> dict[str, list[str]]:
    return {c: [t.format(w) for w in CLASS_WORDS[c] for t in TEMPLATES] for c in classes}


def text_embeddings(model, tokenizer, classes: tuple[str, ...] = CLASSES) -> np.ndarray:
    """Unit-length mean prompt embedding per class: [C, D]."""
    rows = []
    with torch.no_grad():
        for prompts in class_prompts(classes).values():
            emb = model.encode_text(tokenizer(prompts))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(0)
            rows.append(mean / mean.norm())
    return torch.stack(rows).numpy()


def zero_shot_head(clip_model: str, pretrained: str | None, *, feature_norm: float = 1.0,
                   logit_scale: float = 100.0, classes: tuple[str, ...] = CLASSES) -> LinearHead:
    """Build the head from the CLIP text tower named in the served ensemble's metadata."""
    from fer_triton import clip_loader

    if feature_norm <= 0:
        raise ValueError(f"feature_norm must be > 0, not {feature_norm}")
    model, tokenizer = clip_loader.load_clip_text_model(clip_model, pretrained)
    weight = text_embeddings(model, tokenizer, classes) * (logit_scale / feature_norm)
    return LinearHead(weight.astype(np.float32), np.zeros(len(classes), np.float32))
