"""Per-layer parameters and MACs of an artifact (``edgeinfer inspect``), and which nodes of an
INT8 / FP16 file still compute in float.

Counting uses onnx-tool (a maintained ONNX profiler, in the ``bench`` extra) on the FP32 graph at
batch 1: per node its output shape, parameters (initializer elements, each counted once) and
MACs. Nodes are grouped into layers by the torch module that made them, recovered from what the
exporter kept, in this order:

1. the ``pkg.torch.onnx.name_scopes`` metadata of the dynamo exporter (when onnxslim left it);
2. a TorchScript-exporter node name ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``;
3. the name of a parameter the node reads (``layer1.0.conv1.weight`` -> ``layer1.0.conv1``),
   looking through DequantizeLinear / Cast to the stored weight;
4. otherwise the module of the node that produces its first input (a ReLU after a conv joins
   the conv's layer), or ``(graph)`` at the input.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import InvalidOptionError, MissingDependencyError

# Ops that move or reshape data without arithmetic: never "a node that stayed in float".
DATA_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast", "CastLike", "Shape",
    "Size", "Constant", "ConstantOfShape", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Transpose", "Concat", "Gather", "GatherElements", "GatherND", "Slice", "Split", "Identity",
    "Expand", "Range", "Tile", "Pad", "Resize", "Where", "Equal", "Less", "Greater", "Not",
    "And", "Or", "NonZero", "ScatterND", "ScatterElements", "DepthToSpace", "SpaceToDepth",
    "MaxPool",  # order statistics are exact in any precision; QDQ graphs leave them between DQ/Q
})
WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
INT8_OPS = ("QLinear", "ConvInteger", "MatMulInteger", "QGemm", "QAttention")
_PARAM_SUFFIX = re.compile(r"\.(weight|bias|running_mean|running_var|scale|gamma|beta|"
                           r"in_proj_weight|in_proj_bias|pos_embed|cls_token|position_embedding|"
                           r"class_embedding|positional_embedding|proj|logit_scale)$")
_QUANT_SUFFIX = re.compile(r"(_quantized|_DequantizeLinear(_Output)?|_fp16|_scale|_zero_point|"
                           r"_output_0|_dequantized)+$")


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise MissingDependencyError("onnx", "bench", "per-layer counts (edgeinfer inspect)") from e
    return onnx


def _onnx_tool():
    try:
        import onnx_tool
    except ImportError as e:
        raise MissingDependencyError("onnx-tool", "bench", "per-layer MACs (edgeinfer inspect)") from e
    return onnx_tool


# ------------------------------------------------------------------ module names
def _scope_module(node) -> str | None:
    for p in node.metadata_props:
        if p.key.endswith("name_scopes"):
            try:
                scopes = json.loads(p.value.replace("'", '"'))
            except ValueError:
                continue
            scopes = [s for s in scopes if s]
            if scopes:
                return scopes[-1]
    name = node.name or ""
    if name.startswith("/") and name.count("/") >= 2:
        q = ""
        for c in name.split("/")[1:-1]:
            if not c:
                continue
            q = c if (not q or c.startswith(q + ".")) else f"{q}.{c}"
        return q or None
    return None


def _param_module(tensor: str) -> str | None:
    t = _QUANT_SUFFIX.sub("", tensor)
    if _PARAM_SUFFIX.search(t):
        return _PARAM_SUFFIX.sub("", t)
    return None


def module_names(model) -> dict[str, str]:
    """First output name of every node -> the torch module it came from (see the module doc)."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    out: dict[str, str] = {}

    def through(tensor: str, depth: int = 0) -> str | None:
        if tensor in inits:
            return _param_module(tensor)
        p = producer.get(tensor)
        if p is not None and depth < 3 and p.op_type in ("DequantizeLinear", "Cast", "Identity",
                                                          "Constant", "Transpose", "Reshape"):
            for i in p.input:
                m = through(i, depth + 1)
                if m:
                    return m
            if p.op_type == "Constant":
                return _param_module(p.output[0])
        return None

    for n in g.node:  # graph order is topological
        if not n.output:
            continue
        mod = _scope_module(n)
        if mod is None and n.op_type not in ("DequantizeLinear", "QuantizeLinear", "Cast"):
            for i in n.input:
                mod = through(i) if i else None
                if mod:
                    break
        if mod is None:
            first = next((i for i in n.input if i and i not in inits and i in producer), None)
            mod = out.get(producer[first].output[0]) if first else None
        out[n.output[0]] = mod or "(graph)"
    return out


# ------------------------------------------------------------------ counting
def count_nodes(onnx_path, *, input_shape) -> list[dict]:
    """Per node of the graph at batch 1: name, op, module, output shape, params, MACs."""
    onnx = _onnx()
    ot = _onnx_tool()
    import numpy as np

    proto = onnx.load(str(onnx_path))
    mods = module_names(proto)
    # parameters = elements of float initializers (onnx-tool also counts int64 shape constants)
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                   onnx.TensorProto.DOUBLE}
    init_size = {i.name: int(np.prod(i.dims)) if len(i.dims) else 1
                 for i in proto.graph.initializer if i.data_type in float_types}
    m = ot.Model(proto, {"verbose": False})
    if not getattr(m, "valid", True):
        raise InvalidOptionError(f"onnx-tool cannot read {onnx_path}")
    g = m.graph
    feeds = {}
    for name in g.input:
        shape = [1 if (isinstance(v, str) or v is None or v < 0) else int(v)
                 for v in g.tensormap[name].shape]
        if len(shape) == 4 and input_shape is not None:
            shape = [1, *[int(v) for v in input_shape]]
        feeds[name] = (ot.create_ndarray_f32(shape) if name == proto.graph.input[0].name
                       else np.zeros(shape, np.int64))
    g.graph_reorder_nodes()
    g.shape_infer(feeds)
    g.profile()
    rows, seen = [], set()
    for key, node in g.nodemap.items():
        if node.op_type in ("Constant", "Identity"):
            continue
        first = node.output[0] if node.output else key
        macs = getattr(node, "macs", [0, 0])
        shape = getattr(node, "outshape", None)
        params = 0
        for i in node.input:
            if i in init_size and i not in seen:
                seen.add(i)
                params += init_size[i]
        rows.append({"name": key, "op": node.op_type, "module": mods.get(first, "(graph)"),
                     "output_shape": [int(v) for v in shape] if shape is not None else None,
                     "params": params, "macs": int(round(macs[0]))})
    return rows


def group_layers(nodes: list[dict]) -> list[dict]:
    """Consecutive-or-not nodes of one module -> one row (first appearance order): ops, the
    output shape of its last node, summed params and MACs."""
    layers: dict[str, dict] = {}
    for n in nodes:
        L = layers.setdefault(n["module"], {"module": n["module"], "ops": [], "nodes": 0,
                                             "output_shape": None, "params": 0, "macs": 0})
        if n["op"] not in L["ops"]:
            L["ops"].append(n["op"])
        L["nodes"] += 1
        L["output_shape"] = n["output_shape"]
        L["params"] += n["params"]
        L["macs"] += n["macs"]
    return list(layers.values())


# ------------------------------------------------------------------ reduced-precision files
def _elem_types(model) -> dict[str, int]:
    onnx = _onnx()
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - partial type info is still useful
        pass
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def float_nodes(onnx_path, *, precision: str) -> list[dict]:
    """Compute nodes of an INT8 or FP16 file that run in float32.

    INT8 (QDQ or QOperator): a node is integer when it is a QLinear*/…Integer op, or when every
    input that is not a constant, and the weight of a Conv/Gemm/MatMul, comes out of a
    DequantizeLinear (the QDQ pattern the engines fuse). FP16: a node is float32 when shape inference types its output FLOAT.
    """
    onnx = _onnx()
    if precision not in ("int8", "fp16"):
        raise InvalidOptionError.choice("precision", precision, ("int8", "fp16"))
    proto = onnx.load(str(onnx_path))
    g = proto.graph
    mods = module_names(proto)
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    types = _elem_types(proto) if precision == "fp16" else {}
    out = []
    for n in g.node:
        if n.op_type in DATA_OPS or not n.output:
            continue
        if precision == "int8":
            if n.op_type.startswith(INT8_OPS):
                continue
            acts = [i for i in n.input if i and i not in inits
                    and not (i in producer and producer[i].op_type == "Constant")]
            if not acts:
                continue
            # the weight of a matrix op must come through DequantizeLinear too: a float32
            # initializer there (a node excluded from quantization) means a float kernel
            if n.op_type in WEIGHT_OPS and len(n.input) > 1:
                acts.append(n.input[1])
            if all(i in producer and producer[i].op_type == "DequantizeLinear" for i in acts):
                continue
        else:
            if types.get(n.output[0]) != onnx.TensorProto.FLOAT:
                continue
        out.append({"name": n.name or n.output[0], "op": n.op_type,
                    "module": mods.get(n.output[0], "(graph)")})
    return out


# ------------------------------------------------------------------ the artifact
def inspect_artifact(artifact_dir, *, precision: str = "fp32") -> dict:
    """Layers, totals and (for ``int8`` / ``fp16``) the nodes left in float of an artifact.

    Counts always come from the FP32 graph (a quantized graph adds Q/DQ nodes and stores weights
    as int8, which would distort both numbers); the size on disk is the requested file's.
    """
    from ..runtime.artifact import Artifact

    art = Artifact(Path(artifact_dir))
    entry = art.entry(precision)  # raises with the precisions it has
    fp32 = art.path("fp32", verify=False)
    input_size = list(art.preprocess.get("input_size") or [])
    nodes = count_nodes(fp32, input_shape=input_size or None)
    layers = group_layers(nodes)
    res = {
        "model": art.name, "artifact": str(art.dir), "precision": precision,
        "file": entry.get("file"), "size_bytes": int((art.dir / entry["file"]).stat().st_size),
        "input_size": input_size, "weights": art.weights_origin, "counted_on": "fp32",
        "counter": "onnx-tool (batch 1; MACs include element-wise ops)",
        "totals": {"params": int(sum(n["params"] for n in nodes)),
                   "macs": int(sum(n["macs"] for n in nodes)),
                   "nodes": len(nodes), "layers": len(layers)},
        "layers": layers, "nodes": nodes,
    }
    if precision != "fp32":
        fl = float_nodes(art.dir / entry["file"], precision=precision)
        by_op: dict[str, int] = {}
        for f in fl:
            by_op[f["op"]] = by_op.get(f["op"], 0) + 1
        res["float_nodes"] = fl
        res["float_by_op"] = dict(sorted(by_op.items(), key=lambda kv: -kv[1]))
    return res


def model_size_counts(artifact_dir) -> dict:
    """Params and MACs of an artifact's FP32 graph (for ``compare``); {} when the counter is
    missing or cannot read the graph, so a comparison never fails on it."""
    try:
        r = inspect_artifact(artifact_dir, precision="fp32")
    except MissingDependencyError:
        return {}
    except Exception as e:  # noqa: BLE001 - a count is a nice-to-have next to accuracy
        return {"error": f"{type(e).__name__}: {e}"}
    return {"params": r["totals"]["params"], "macs": r["totals"]["macs"]}
