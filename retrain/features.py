"""Masked features and the serving head's predictions, computed by the RUNNING server's ensemble.

No local CLIP weights are needed: the served ``cafe`` ensemble returns ``masked_features`` (the
input of the linear head) next to ``probabilities`` (what the serving head predicts today).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer_triton.client import FerClient


@dataclass
class SiteFeatures:
    masked_features: np.ndarray   # FP32 [N, 512]
    probabilities: np.ndarray     # FP32 [N, 7], from the head the server serves now

    def __len__(self) -> int:
        return len(self.masked_features)

    def subset(self, index: np.ndarray) -> "SiteFeatures":
        return SiteFeatures(self.masked_features[index], self.probabilities[index])


def extract_features(client: FerClient, faces: np.ndarray, *, batch_size: int = 32,
                     progress: bool = True, description: str = "features") -> SiteFeatures:
    """Send ``faces`` (UINT8 [N,S,S,3]) through the ensemble in batches, with a tqdm progress bar.

    Returns masked features FP32 [N, 512] and the serving head's probabilities FP32 [N, 7];
    raises FerInputError / FerServerError as ``FerClient.infer_all``.
    """
    from tqdm import tqdm

    with tqdm(total=len(faces), desc=description, unit="img", disable=not progress, leave=False) as bar:
        out = client.infer_all(faces, batch_size=batch_size, with_features=True, on_batch=bar.update)
    return SiteFeatures(out.masked_features, out.probabilities)
