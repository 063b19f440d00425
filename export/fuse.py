r"""Merge the preprocess, CLIP encoder and mask-net graphs into ONE ONNX graph (the "fused" CPU layout).

    faces (UINT8) -> [preprocess] -> pixels -> [clip encoder] -> clip_features
                                           \-> [mask net]     -> mask_logits

On a small CPU, running the three stages in one onnxruntime session (one Triton python-backend
process) avoids two stage processes competing for the same cores and the copies of the FP32
pixel tensor between them. The head stays a model of its own: retraining publishes new head
versions without touching the 400 MB backbone.
"""

from __future__ import annotations

from pathlib import Path

from fer_triton.export.onnx_chain import GRAPH_IO

BACKBONE_INPUTS, BACKBONE_OUTPUTS = GRAPH_IO["backbone"]


def fuse_backbone(preprocess: Path, clip_encoder: Path, mask_net: Path, output: Path) -> Path:
    """Write the merged graph (faces -> clip_features, mask_logits) to ``output``.

    Structure only (names, opsets, ``onnx.checker``): export compares the fused graph's outputs with
    PyTorch's (export/validate.py) before it writes a repository. The output is a pure function of
    the three input files, so the repository writer's own fusion gives the same graph.
    Raises ValueError when the stage graphs do not connect by the public tensor names.
    """
    import onnx
    from onnx import compose, helper

    parts = {"preprocess": preprocess, "clip_encoder": clip_encoder, "mask_net": mask_net}
    graphs, opsets = [], {}
    for prefix, path in parts.items():
        model = onnx.load(str(path))
        for op in model.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        # Prefix every internal name so the graphs cannot clash; the tensors that connect the
        # stages (faces, pixels, clip_features, mask_logits) keep their public names.
        graphs.append(compose.add_prefix_graph(model.graph, f"{prefix}/", rename_inputs=False,
                                               rename_outputs=False))
    pre, clip, mask = graphs
    for graph, name in ((clip, "clip_encoder"), (mask, "mask_net")):
        if [i.name for i in graph.input] != ["pixels"]:
            raise ValueError(f"{parts[name]}: expected one input named 'pixels', got {[i.name for i in graph.input]}")
    outputs = [o for g in (clip, mask) for o in g.output]
    if [o.name for o in outputs] != list(BACKBONE_OUTPUTS):
        raise ValueError(f"stage outputs {[o.name for o in outputs]} are not {list(BACKBONE_OUTPUTS)}")
    graph = helper.make_graph(
        [n for g in graphs for n in g.node], "cafe_backbone", list(pre.input), outputs,
        initializer=[t for g in graphs for t in g.initializer],
        value_info=[v for g in graphs for v in g.value_info] + list(pre.output),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="fer-triton fuse")
    model.ir_version = max(onnx.load(str(p), load_external_data=False).ir_version for p in parts.values())
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(output))
    onnx.checker.check_model(str(output))
    return output
