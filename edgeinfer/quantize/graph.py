"""Small ONNX graph helpers for quantization: running, intermediate tensors, node selection."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import MissingDependencyError

# Ops that carry the transformer parts which lose accuracy in INT8 (ARCHITECTURE.md, "Precision rules").
TRANSFORMER_FLOAT_OPS = ("LayerNormalization", "Softmax", "Gelu", "Erf")


def onnx_mod():
    try:
        import onnx
    except ImportError as e:
        raise MissingDependencyError("onnx", "export", "quantization") from e
    return onnx


def ort_mod():
    import onnxruntime as ort
    return ort


def session(path_or_bytes, threads: int | None = None):
    ort = ort_mod()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    src = str(path_or_bytes) if isinstance(path_or_bytes, (str, os.PathLike)) else path_or_bytes
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_model(path_or_sess, x: np.ndarray, *, batch: int = 8, input_name: str | None = None,
              output_names: list[str] | None = None) -> np.ndarray:
    """First output of a single-input model on ``x`` (in batches)."""
    sess = path_or_sess if hasattr(path_or_sess, "run") else session(path_or_sess)
    name = input_name or sess.get_inputs()[0].name
    outs = [sess.run(output_names, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def name_nodes(model) -> int:
    """Give every unnamed node a unique name (nodes_to_exclude works by name). Returns count."""
    seen = {n.name for n in model.graph.node if n.name}
    k = 0
    for i, n in enumerate(model.graph.node):
        if not n.name:
            base = f"{n.op_type}_{i}"
            name, j = base, 0
            while name in seen:
                j += 1
                name = f"{base}_{j}"
            n.name = name
            seen.add(name)
            k += 1
    return k


def constant_names(model) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            names.update(n.output)
    return names


def residual_adds(model) -> list[str]:
    """Add nodes whose two inputs are both activations (skip connections, not bias adds)."""
    const = constant_names(model)
    return [n.name for n in model.graph.node
            if n.op_type == "Add" and len(n.input) == 2 and not (set(n.input) & const)]


def gelu_nodes(model) -> list[str]:
    """Nodes of an Erf-based GELU (x * 0.5 * (1 + erf(x / sqrt 2))): Div -> Erf -> Add -> Mul -> Mul."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = []
    for n in model.graph.node:
        if n.op_type != "Erf":
            continue
        out.append(n.name)
        p = producer.get(n.input[0])
        if p is not None and p.op_type in ("Div", "Mul"):
            out.append(p.name)
        frontier = [n]
        for _ in range(3):  # Add, Mul, Mul
            nxt = [c for f in frontier for o in f.output for c in consumers.get(o, [])
                   if c.op_type in ("Add", "Mul")]
            out.extend(c.name for c in nxt)
            frontier = nxt
    return sorted(set(out))


def float_keep_nodes(model, quantize_cfg: dict) -> dict[str, list[str]]:
    """Nodes the recipe keeps in float: reason -> node names."""
    keep: dict[str, list[str]] = {}
    if not quantize_cfg:
        return keep
    ops = set(quantize_cfg.get("keep_float_ops") or [])
    if quantize_cfg.get("transformer") and not ops:
        ops = set(TRANSFORMER_FLOAT_OPS)
    if ops:
        names = [n.name for n in model.graph.node if n.op_type in ops]
        if names:
            keep["keep_float_ops"] = names
    if "Gelu" in ops or "Erf" in ops:
        g = gelu_nodes(model)
        if g:
            keep["gelu"] = g
    if quantize_cfg.get("keep_residual_adds"):
        r = residual_adds(model)
        if r:
            keep["residual_adds"] = r
    extra = quantize_cfg.get("keep_float_nodes") or []
    if extra:
        have = {n.name for n in model.graph.node}
        keep["recipe_nodes"] = [x for x in extra if x in have]
    return keep


def float_tensor_outputs(model) -> dict[str, str]:
    """Float activation tensors produced by nodes: tensor name -> producing node name."""
    onnx = onnx_mod()
    vi = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    out = {}
    for n in model.graph.node:
        if n.op_type in ("Constant", "Shape", "Cast"):
            continue
        for o in n.output:
            v = vi.get(o)
            if v is not None and v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                out[o] = n.name
    return out


def with_outputs(model, names: Iterable[str]):
    """A copy of ``model`` with extra graph outputs (float tensors)."""
    onnx = onnx_mod()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for nm in names:
        if nm not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(nm, onnx.TensorProto.FLOAT, None))
    return m


def load(path: str | os.PathLike):
    return onnx_mod().load(str(Path(path)))
