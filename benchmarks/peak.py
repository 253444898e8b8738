#!/usr/bin/env python
"""This CPU's measured GEMM peak per precision, and each edgeinfer pick's achieved GOP/s against it.

In ONE process, in alternating blocks of consecutive runs (so the machine's load hits every row alike):

- GEMM   numpy f32 matmul (the BLAS numpy ships), OpenVINO MatMul compiled with
         INFERENCE_PRECISION_HINT f32, the CPU's half type (bf16/f16, only where OpenVINO reports
         it), and an INT8 MatMul (FakeQuantize on both inputs, which OpenVINO's low-precision
         transformations turn into a u8 x i8 kernel; the exec graph's runtime precision is
         recorded to prove it ran in INT8). Size M=N=K (default 1024): 2*M*N*K ops a run.
- picks  ``edgeinfer.load(artifact, provider="auto", precision="auto")`` per artifact, batch 1;
         ops = 2 x MACs of the FP32 graph (``edgeinfer inspect``'s counter, onnx-tool; it
         includes element-wise ops, so achieved GOP/s is an upper-bound estimate).

Each pick is set against the GEMM peak of the precision it computes in (int8 -> INT8 GEMM; fp16
-> the CPU's half type if it has one, else f32; fp32 -> f32). Writes
``benchmarks/results/peak.md`` and ``peak.json`` with the command, the machine and
``os.getloadavg()`` before and after (the numbers are only as quiet as the machine was).

    python benchmarks/peak.py --artifacts /tmp/perf/mobilevit_s,/tmp/perf/clip_vit_b32
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from _results import command_line

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def ov_gemm(n: int, mode: str):
    """A compiled OpenVINO MatMul [n,n] x [n,n]; mode f32 / bf16 / f16 / int8."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], ov.Type.f32, name="a")
    w = ops.constant(rng.uniform(-1, 1, (n, n)).astype(np.float32))
    if mode == "int8":
        def fq(x, lo, hi, levels):
            lo_c, hi_c = ops.constant(np.float32(lo)), ops.constant(np.float32(hi))
            return ops.fake_quantize(x, lo_c, hi_c, lo_c, hi_c, levels)
        a_q, w_q = fq(a, 0.0, 2.55, 256), fq(w, -1.27, 1.27, 255)
        out = ops.matmul(a_q, w_q, False, False)
        cfg = {"INFERENCE_PRECISION_HINT": "f32"}
        x = rng.uniform(0, 2.55, (n, n)).astype(np.float32)
    else:
        out = ops.matmul(a, w, False, False)
        cfg = {"INFERENCE_PRECISION_HINT": mode}
        x = rng.standard_normal((n, n)).astype(np.float32)
    cfg["PERFORMANCE_HINT"] = "LATENCY"
    model = ov.Model([out], [a], f"gemm_{mode}")
    c = ov.Core().compile_model(model, "CPU", cfg)
    prec = sorted({op.get_rt_info()["runtimePrecision"].astype(str)
                   for op in c.get_runtime_model().get_ordered_ops()
                   if "runtimePrecision" in op.get_rt_info()
                   and op.get_rt_info()["layerType"].astype(str) in ("MatMul", "FullyConnected")})
    req = c.create_infer_request()
    return (lambda: req.infer({0: x})), {"runtime_precision": prec,
                                         "inference_precision": str(c.get_property("INFERENCE_PRECISION_HINT"))}


def ort_int8_gemm(n: int):
    """ONNX Runtime MatMulInteger u8 x s8 -> i32 (MLAS's INT8 kernel, the one ORT's QDQ INT8 files run
    on): OpenVINO's FakeQuantize MatMul is not this CPU's fastest INT8 GEMM on AVX2."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.integers(-63, 64, (n, n)).astype(np.int8), "b")  # 7-bit: no vpmaddubsw saturation
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])], [b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (n, n)).astype(np.uint8)
    return (lambda: s.run(None, {"a": a})), {"kernel": "ORT MatMulInteger u8s8"}


def numpy_gemm(n: int):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(np.float32), rng.standard_normal((n, n)).astype(np.float32)
    return (lambda: a @ b), {"blas": "numpy"}


def pick_runner(art_dir: Path):
    import edgeinfer
    from edgeinfer.evaluate.layers import inspect_artifact
    from edgeinfer.runtime.artifact import Artifact

    art = Artifact(art_dir)
    m = edgeinfer.load(art_dir, provider="auto", precision="auto")
    size = list(art.preprocess.get("input_size") or [224, 224])
    x = np.random.default_rng(0).standard_normal((1, 3, *size[-2:])).astype(np.float32)
    try:
        macs, counter = inspect_artifact(art_dir, precision="fp32")["totals"]["macs"], "onnx-tool"
    except Exception as e:  # noqa: BLE001 - onnx-tool's shape inference fails on some graphs
        macs, counter = ov_macs(art.path("fp32"), x.shape), f"OpenVINO shapes (onnx-tool: {type(e).__name__})"
    return (lambda: m.infer(x)), {"model": art.name, "provider": m.provider, "precision": m.precision,
                                  "reason": str(m.selection), "macs": int(macs), "mac_counter": counter}


def ov_macs(onnx_path, shape) -> int:
    """MACs of Convolution / GroupConvolution / MatMul on the static-shape graph (no element-wise ops)."""
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    model.reshape({model.inputs[0].get_any_name(): list(shape)})
    total = 0
    for op in model.get_ordered_ops():
        t = op.get_type_name()
        if t in ("Convolution", "GroupConvolution"):
            out = list(op.get_output_shape(0))
            w = list(op.input_value(1).get_shape())
            k = int(np.prod(w[-2:])) * (w[-3] if t == "GroupConvolution" else w[1])
            total += int(np.prod(out)) * k
        elif t == "MatMul":
            a = list(op.input_value(0).get_shape())
            k = a[-2] if op.get_transpose_a() else a[-1]
            total += int(np.prod(list(op.get_output_shape(0)))) * int(k)
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default="", help="comma-separated artifact dirs (their picks are measured)")
    ap.add_argument("--n", type=int, default=1024, help="GEMM size M=N=K")
    ap.add_argument("--rounds", type=int, default=30, help="timed runs per row (in 3 alternating blocks)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "peak.md"))
    ap.add_argument("--note", action="append", default=[],
                    help="a finding printed under the table (repeatable); say what the numbers mean")
    args = ap.parse_args(argv)
    from edgeinfer.backends.openvino import cpu_half_precision
    from edgeinfer.bench.fingerprint import machine_fingerprint

    load0 = os.getloadavg()
    half = cpu_half_precision()
    rows: dict[str, dict] = {}
    gemm_ops = 2 * args.n ** 3
    rows["numpy f32 GEMM"] = dict(zip(("fn", "info"), numpy_gemm(args.n)), ops=gemm_ops, kind="gemm", prec="f32")
    for mode in ["f32"] + ([half] if half else []) + ["int8"]:
        try:
            fn, info = ov_gemm(args.n, mode)
            rows[f"OpenVINO {mode} GEMM"] = dict(fn=fn, info=info, ops=gemm_ops, kind="gemm", prec=mode)
        except Exception as e:  # noqa: BLE001 - a precision this CPU/plugin lacks is a result
            rows[f"OpenVINO {mode} GEMM"] = dict(error=f"{type(e).__name__}: {str(e)[:200]}", kind="gemm", prec=mode)
    try:
        fn, info = ort_int8_gemm(args.n)
        rows["ONNX Runtime int8 GEMM"] = dict(fn=fn, info=info, ops=gemm_ops, kind="gemm", prec="int8")
    except Exception as e:  # noqa: BLE001
        rows["ONNX Runtime int8 GEMM"] = dict(error=f"{type(e).__name__}: {str(e)[:200]}", kind="gemm", prec="int8")
    for d in [Path(p) for p in args.artifacts.split(",") if p]:
        fn, info = pick_runner(d)
        comp = {"int8": "int8", "fp16": half or "f32"}.get(info["precision"], "f32")
        rows[f"edgeinfer pick: {info['model']}"] = dict(fn=fn, info=info, ops=2 * info["macs"], kind="pick",
                                                        prec=comp)
    live = {k: r for k, r in rows.items() if "fn" in r}
    for r in live.values():
        r["ts"] = []
    # Blocks, not run-by-run interleaving: numpy's OpenBLAS, OpenVINO's TBB and ONNX Runtime each
    # keep their worker threads spinning for a while after a call, so on 2 cores a run right after
    # another runtime's run competes with those spinners (seen: picks at 116-134% of the GEMM
    # "peak" and resnet50 INT8 at 134 ms vs 40 ms measured alone). Each block: a pause for the
    # previous runtime's threads to park, warm-up, then consecutive runs; blocks alternate rows.
    blocks = 3
    for _ in range(blocks):
        for r in live.values():
            time.sleep(0.5)
            for _ in range(2):
                r["fn"]()
            for _ in range(max(1, args.rounds // blocks)):
                t0 = time.perf_counter()
                r["fn"]()
                r["ts"].append(time.perf_counter() - t0)
    load1 = os.getloadavg()
    peak = {}
    for k, r in live.items():
        r["median_ms"] = statistics.median(r["ts"]) * 1000
        r["gops"] = r["ops"] / (r["median_ms"] / 1000) / 1e9
        if r["kind"] == "gemm":
            peak[r["prec"]] = max(peak.get(r["prec"], 0.0), r["gops"])
    fp = machine_fingerprint()
    cmd = command_line(__file__, argv)
    L = ["# CPU GEMM peak vs edgeinfer's picks", "",
         f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} on {fp['cpu']['model']} "
         f"({fp['cpu']['cores']} cores, INT8 tier {fp['cpu']['int8_tier']}, OpenVINO half type: {half or 'none'}). "
         f"One process, 3 alternating blocks of {max(1, args.rounds // 3)} consecutive runs per row "
         f"(after a 0.5 s pause and 2 warm-up runs), medians; GEMM {args.n}x{args.n}x{args.n}.", "",
         f"**Load average** (1/5/15 min) before {tuple(round(v, 2) for v in load0)}, after "
         f"{tuple(round(v, 2) for v in load1)}. The machine was shared with other jobs: absolute "
         "numbers are pessimistic; the pick-to-peak ratios come from the same rounds.", "",
         "```", cmd, "```", "",
         "| row | computes in | median ms | GOP/s | % of same-precision GEMM peak | notes |",
         "|---|---|---:|---:|---:|---|"]
    for k, r in rows.items():
        if "error" in r:
            L.append(f"| {k} | {r['prec']} | – | – | – | failed: {r['error']} |")
            continue
        pct = r["gops"] / peak[r["prec"]] * 100 if peak.get(r["prec"]) else None
        note = ", ".join(f"{a}: {b}" for a, b in r["info"].items() if a in ("runtime_precision", "kernel", "provider", "precision", "macs", "mac_counter"))
        L.append(f"| {k} | {r['prec']} | {r['median_ms']:.2f} | {r['gops']:.1f} | "
                 f"{'' if pct is None else f'{pct:.0f}%'} | {note} |")
    L += ["", "GOP/s of a pick = 2 x MACs (onnx-tool count of the FP32 graph, element-wise ops included) / "
          "batch-1 median latency. A conv/attention network at batch 1 cannot reach a large GEMM's rate "
          "(small matrices, memory-bound element-wise ops, per-op overhead); the column shows how far.", ""]
    L += [f"- {n}" for n in args.note] + ([""] if args.note else [])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(L))
    out.with_suffix(".json").write_text(json.dumps({
        "command": cmd, "loadavg_before": load0, "loadavg_after": load1, "machine": fp, "peak_gops": peak,
        "rows": {k: {kk: vv for kk, vv in r.items() if kk not in ("fn", "ts")} for k, r in rows.items()}},
        indent=1, default=str))
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
