"""Triton python-backend model ``<prefix>_site_head``: every site's own linear head, in one process.

Copied by ``fer-triton export`` and by every site change (retrain/sites.py) into each version of the
site head as ``model.py``. It needs numpy only (no fer_triton), so GPU hosts run it unchanged in
NVIDIA's Triton container.

Inputs, per face (the ``<prefix>_sites`` ensemble feeds them from the base head's step):
    masked_features     FP32 [B, 512]   CLIP features x sigmoid(mask): what every head sees
    base_logits         FP32 [B, C]     the base head's logits
    base_probabilities  FP32 [B, C]     the base head's softmax
    site                BYTES [B, 1]    the face's site (UTF-8); "" = the base model
Outputs:
    logits, probabilities  FP32 [B, C]: the site's own head (softmax of masked_features @ W.T + b)
    when the site has one; the base head's outputs unchanged for "" and for sites without a head.

The version folder holds ``sites.json`` (the table: every site and the key of its served head) and
``sites.npz`` (``<key>/weight`` FP32 [C, 512], ``<key>/bias`` FP32 [C]); only the served heads are
loaded, about 14 KB per site. A request naming a site that is not in the table fails with an error
naming it (the other requests of the dynamic batch are answered).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

INPUTS = ("masked_features", "base_logits", "base_probabilities", "site")


def load_heads(folder):
    """(known site names, {site: (weight [C, 512], bias [C])} of the sites that have a head) from a version folder."""
    with open(os.path.join(folder, "sites.json"), encoding="utf-8") as fh:
        table = json.load(fh)
    heads = {}
    with np.load(os.path.join(folder, "sites.npz"), allow_pickle=False) as arrays:
        for name, site in table["sites"].items():
            if site["heads"]:
                key = site["heads"][-1]["key"]
                heads[name] = (arrays[f"{key}/weight"].astype(np.float32), arrays[f"{key}/bias"].astype(np.float32))
    return set(table["sites"]), heads


def site_outputs(features, logits, probabilities, sites, heads):
    """Each row's site head where it has one, else the base outputs (copied, never changed in place)."""
    logits, probabilities = logits.copy(), probabilities.copy()
    names = np.asarray(sites, dtype=object)
    for name in set(sites) & set(heads):
        rows = names == name
        weight, bias = heads[name]
        z = features[rows].astype(np.float32) @ weight.T + bias
        logits[rows] = z
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probabilities[rows] = e / e.sum(axis=1, keepdims=True)
    return logits, probabilities


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.known, self.heads = load_heads(folder)

    def execute(self, requests):
        responses = [None] * len(requests)
        parts, live = {n: [] for n in INPUTS}, []
        for i, request in enumerate(requests):
            arrays = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in INPUTS]
            sites = [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in arrays[3].reshape(-1)]
            if len(sites) != arrays[0].shape[0]:
                responses[i] = self._error(f"{len(sites)} site names for {arrays[0].shape[0]} faces: send one per face")
                continue
            unknown = sorted({s for s in sites if s and s not in self.known})
            if unknown:
                responses[i] = self._error(
                    f"unknown site(s) {', '.join(map(repr, unknown))} (this server knows {len(self.known)} site(s)): "
                    "create a site with `fer-triton sites add NAME`, or send '' for the base model")
                continue
            for name, array in zip(INPUTS[:3], arrays):
                parts[name].append(array)
            parts["site"].extend(sites)
            live.append((i, len(sites)))
        if live:
            stacked = [np.concatenate(parts[n]) for n in INPUTS[:3]]
            logits, probabilities = site_outputs(*stacked, parts["site"], self.heads)
            start = 0
            for i, size in live:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("logits", logits[start:start + size]),
                    pb_utils.Tensor("probabilities", probabilities[start:start + size])])
                start += size
        return responses

    def _error(self, message):
        # INVALID_ARGUMENT where the python backend has error codes (2.51 does): the request is wrong,
        # the server is fine, and a client never retries it.
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
        text = f"{self.model_name}: {message}"
        error = pb_utils.TritonError(text) if code is None else pb_utils.TritonError(text, code)
        return pb_utils.InferenceResponse(output_tensors=[], error=error)
