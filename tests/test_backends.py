"""Backends: option building (no GPU needed), detection, selection with mocked machines, sessions."""
from __future__ import annotations

import json
import os
import threading
import types

import numpy as np
import pytest

from edgeinfer.backends import SessionOptions, create_session
from edgeinfer.backends import ort as ortb
from edgeinfer.backends import providers as pv
from edgeinfer.backends.cache import engine_cache_dir
from edgeinfer.backends.providers import DeviceStatus, ProviderStatus
from edgeinfer.errors import InvalidOptionError, ProviderUnavailableError
from edgeinfer.runtime import selection as sl
from edgeinfer.runtime.artifact import Artifact
from edgeinfer.runtime.selection import select

from test_runtime_helpers import tiny_artifact, tiny_onnx

# ----------------------------------------------------------------- pure option builders


def test_tensorrt_options_cache_flags_and_profiles(tmp_path):
    o = ortb.tensorrt_provider_options(device_id=1, fp16=True, int8=True, cache_dir=tmp_path,
                                       input_shapes={"pixel_values": (3, 256, 256)},
                                       opt_batch=4, max_batch=16)
    assert o["device_id"] == 1
    assert o["trt_fp16_enable"] is True and o["trt_int8_enable"] is True
    assert o["trt_int8_use_native_calibration_table"] is False
    assert o["trt_engine_cache_enable"] is True and o["trt_engine_cache_path"] == str(tmp_path)
    assert o["trt_timing_cache_enable"] is True and o["trt_timing_cache_path"] == str(tmp_path)
    assert o["trt_max_workspace_size"] == ortb.DEFAULT_TRT_WORKSPACE
    assert o["trt_profile_min_shapes"] == "pixel_values:1x3x256x256"
    assert o["trt_profile_opt_shapes"] == "pixel_values:4x3x256x256"
    assert o["trt_profile_max_shapes"] == "pixel_values:16x3x256x256"
    plain = ortb.tensorrt_provider_options()
    assert plain["trt_fp16_enable"] is False and plain["trt_int8_enable"] is False
    assert "trt_engine_cache_enable" not in plain and "trt_profile_min_shapes" not in plain
    with pytest.raises(InvalidOptionError):
        ortb.tensorrt_provider_options(opt_batch=64, max_batch=32)


def test_provider_chains():
    assert [p for p, _ in ortb.provider_chain("cpu")] == ["CPUExecutionProvider"]
    cuda = ortb.provider_chain("cuda", device_id=2)
    assert [p for p, _ in cuda] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert cuda[0][1]["device_id"] == 2 and cuda[0][1]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    trt = ortb.provider_chain("tensorrt", fp16=True, input_shapes={"input_ids": (77,)})
    assert [p for p, _ in trt] == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                   "CPUExecutionProvider"]
    assert trt[0][1]["trt_profile_max_shapes"] == "input_ids:32x77"
    with pytest.raises(InvalidOptionError, match="cpu, cuda, tensorrt"):
        ortb.provider_chain("rocm")


def test_cpu_session_config():
    c = ortb.cpu_session_config(3)
    assert c == {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": 3,
                 "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL"}
    assert ortb.cpu_session_config(None)["intra_op_num_threads"] == ortb.physical_cores() >= 1
    assert ortb.physical_cores() <= (os.cpu_count() or 1)
    with pytest.raises(InvalidOptionError):
        ortb.cpu_session_config(0)


def test_engine_cache_dir_is_keyed(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "c"))
    a = engine_cache_dir(engine="tensorrt", model_sha="ab" * 32, engine_version="10.3", device="gpu0-fp16")
    b = engine_cache_dir(engine="tensorrt", model_sha="ab" * 32, engine_version="10.4", device="gpu0-fp16")
    c = engine_cache_dir(engine="tensorrt", model_sha="cd" * 32, engine_version="10.3", device="gpu0-fp16")
    assert a.parent == tmp_path / "c" / "tensorrt" and a.is_dir()
    assert len({a, b, c}) == 3


def test_openvino_compile_config():
    from edgeinfer.backends.openvino import compile_config

    c = compile_config(device="CPU", threads=2, cache_dir="/x", precision="fp32")
    assert c == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2, "CACHE_DIR": "/x",
                 "INFERENCE_PRECISION_HINT": "f32"}
    g = compile_config(device="GPU.0", hint="throughput", precision="fp16")
    assert g["PERFORMANCE_HINT"] == "THROUGHPUT" and g["INFERENCE_PRECISION_HINT"] == "f16"
    assert "INFERENCE_NUM_THREADS" not in compile_config(device="NPU", threads=4)
    # the CPU never silently runs bf16 (default on AVX512-BF16/AMX CPUs)
    assert compile_config(device="CPU", precision="int8")["INFERENCE_PRECISION_HINT"] == "f32"
    assert compile_config(device="CPU")["INFERENCE_PRECISION_HINT"] == "f32"
    with pytest.raises(InvalidOptionError, match="LATENCY"):
        compile_config(hint="FAST")
    with pytest.raises(InvalidOptionError, match="NPU"):
        compile_config(device="TPU")


# ----------------------------------------------------------------- ORT sessions with a fake onnxruntime
class _FakeSess:
    def __init__(self, path, sess_options=None, providers=(), provider_options=()):
        _FakeSess.last = self
        self.providers, self.provider_options = list(providers), list(provider_options)
        self.got = _FakeSess.got

    def get_providers(self):
        return self.got

    def get_inputs(self):
        return [types.SimpleNamespace(name="pixel_values", shape=["batch", 3, 8, 8], type="tensor(float)")]

    def get_outputs(self):
        return [types.SimpleNamespace(name="logits", shape=["batch", 10], type="tensor(float)")]


def _fake_ort(available, got):
    class SO:
        def add_session_config_entry(self, k, v):
            pass

    _FakeSess.got = got
    return types.SimpleNamespace(
        __version__="9.9.9", get_available_providers=lambda: available, InferenceSession=_FakeSess,
        SessionOptions=SO,
        GraphOptimizationLevel=types.SimpleNamespace(ORT_ENABLE_ALL=99),
        ExecutionMode=types.SimpleNamespace(ORT_SEQUENTIAL=0))


def test_tensorrt_session_options_applied_without_gpu(tmp_path, monkeypatch):
    gpu_eps = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ortb, "import_ort", lambda: _fake_ort(gpu_eps, gpu_eps))
    model = tiny_onnx(tmp_path / "m.onnx")
    s = ortb.OrtSession(model, provider="tensorrt",
                        options=SessionOptions(precision="fp16", device="cuda:1",
                                               cache_dir=str(tmp_path / "cache"),
                                               input_shapes={"pixel_values": (3, 32, 32)}))
    sess = _FakeSess.last
    assert sess.providers == gpu_eps
    trt = sess.provider_options[0]
    assert trt["device_id"] == 1 and trt["trt_fp16_enable"] is True and trt["trt_int8_enable"] is False
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path / "cache" / "tensorrt"))
    assert "ort9.9.9" in trt["trt_engine_cache_path"]
    assert trt["trt_profile_opt_shapes"] == "pixel_values:8x3x32x32"
    assert s.device == "cuda:1" and s.cache_hit is False
    # the kernel flags follow the file's precision, inside the backend
    ortb.OrtSession(model, provider="tensorrt", options=SessionOptions(precision="int8"))
    trt = _FakeSess.last.provider_options[0]
    assert trt["trt_int8_enable"] is True and trt["trt_fp16_enable"] is True
    ortb.OrtSession(model, provider="tensorrt", options=SessionOptions(precision="fp32"))
    trt = _FakeSess.last.provider_options[0]
    assert trt["trt_int8_enable"] is False and trt["trt_fp16_enable"] is False


def test_silent_cpu_fallback_is_an_error(tmp_path, monkeypatch):
    # onnxruntime-gpu lists CUDA but the session only got the CPU (CUDA libraries missing)
    monkeypatch.setattr(ortb, "import_ort", lambda: _fake_ort(
        ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]))
    with pytest.raises(ProviderUnavailableError, match="fell back"):
        ortb.OrtSession(tiny_onnx(tmp_path / "m.onnx"), provider="cuda")


def test_missing_gpu_provider_says_what_to_install(tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
        create_session(tiny_onnx(tmp_path / "m.onnx"), provider="cuda")


# ----------------------------------------------------------------- selection with mocked machines
CPU_VNNI = {"int8_tier": "vnni", "isa": {"arm": False}, "vendor": "GenuineIntel"}
CPU_AVX2 = {"int8_tier": "avx2", "isa": {"arm": False}, "vendor": "GenuineIntel"}
CPU_AMD = {"int8_tier": "vnni", "isa": {"arm": False}, "vendor": "AuthenticAMD"}
CPU_ARM = {"int8_tier": "arm", "isa": {"arm": True}, "vendor": ""}


def _st(trt=False, cuda=False, ov=True, ov_devices=("CPU",)):
    gpu = ["cuda:0"]
    devs = list(ov_devices) if ov else []
    return [ProviderStatus("cpu", True, "ok", ["CPU"], install="pip install onnxruntime"),
            ProviderStatus("cuda", cuda, "ok" if cuda else "no NVIDIA driver", gpu if cuda else [],
                           install="pip install 'edgeinfer[gpu]'"),
            ProviderStatus("tensorrt", trt, "ok" if trt else "TensorRT libraries not found",
                           gpu if trt else [], install="pip install 'edgeinfer[gpu]' tensorrt"),
            ProviderStatus("openvino", ov, "ok" if ov else "openvino package is not installed", devs,
                           install="pip install 'edgeinfer[openvino]'",
                           device_status=[DeviceStatus(d, d in devs, "x") for d in ("CPU", "GPU", "NPU")])]


@pytest.fixture
def art(tmp_path):
    d = tiny_artifact(tmp_path / "a", precisions=("fp32", "fp16", "int8"))
    return Artifact(d)


@pytest.fixture
def no_intel_gpu(monkeypatch):
    monkeypatch.setattr(pv, "intel_gpu_present", lambda: False)
    monkeypatch.setattr(pv, "npu_present", lambda: False)
    monkeypatch.setattr(pv, "openvino_installed", lambda: True)


def test_auto_order_tensorrt_cuda_openvino_cpu(art, monkeypatch, no_intel_gpu):
    s = select(artifact=art, statuses=_st(trt=True, cuda=True), cpu=CPU_VNNI)
    assert (s.provider, s.device) == ("tensorrt", "cuda:0") and "tensorrt" in s.reason
    assert s.precision == "int8"  # TensorRT + an INT8 file whose guard did not fail
    s = select(artifact=art, statuses=_st(cuda=True), cpu=CPU_VNNI)
    assert (s.provider, s.precision) == ("cuda", "fp16")
    monkeypatch.setattr(pv, "intel_gpu_present", lambda: True)
    s = select(artifact=art, statuses=_st(ov_devices=("CPU", "GPU.0")), cpu=CPU_VNNI)
    assert (s.provider, s.device, s.precision) == ("openvino", "GPU.0", "fp16")
    monkeypatch.setattr(pv, "intel_gpu_present", lambda: False)
    monkeypatch.setattr(pv, "npu_present", lambda: True)
    s = select(artifact=art, statuses=_st(ov_devices=("CPU", "NPU")), cpu=CPU_AVX2)
    assert (s.provider, s.device, s.precision) == ("openvino", "NPU", "int8")


def test_auto_cpu_engine_heuristic(art, monkeypatch, no_intel_gpu):
    s = select(artifact=art, statuses=_st(), cpu=CPU_VNNI)
    assert (s.provider, s.device, s.precision) == ("openvino", "CPU", "int8")
    assert "heuristic" in s.reason and not s.tuned
    s = select(artifact=art, statuses=_st(), cpu=CPU_AVX2)
    assert s.precision == "fp32" and "no fast INT8" in s.reason
    s = select(artifact=art, statuses=_st(), cpu=CPU_ARM)
    assert s.provider == "cpu" and "ARM" in s.reason
    s = select(artifact=art, statuses=_st(), cpu=CPU_AMD)
    assert (s.provider, s.precision) == ("cpu", "int8") and "AuthenticAMD" in s.reason
    monkeypatch.setattr(pv, "openvino_installed", lambda: False)
    s = select(artifact=art, statuses=_st(ov=False), cpu=CPU_VNNI)
    assert s.provider == "cpu" and "openvino not installed" in s.reason


def _guard_record(cosine_mean: float) -> dict:
    # the shape `edgeinfer quantize` writes (see test_int8_guard_record_the_quantizer_writes)
    return {"quantization": {"budget": {"kind": "embedding", "max_drop": 0.01, "unit": "cosine",
                                        "text": "mean cosine to FP32 >= 0.9900"}},
            "fidelity": {"cosine_mean": cosine_mean, "top1_agreement": None}}


def test_failed_int8_guard_is_not_auto_selected(tmp_path, no_intel_gpu):
    d = tiny_artifact(tmp_path / "g", precisions=("fp32", "int8"))
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["int8"].update(_guard_record(0.95))
    (d / "manifest.json").write_text(json.dumps(m))
    s = select(artifact=Artifact(d), statuses=_st(), cpu=CPU_VNNI)
    assert s.precision == "fp32"
    assert select(artifact=Artifact(d), statuses=_st(), cpu=CPU_VNNI, precision="int8").precision == "int8"


def _measure(art, provider, precision, ms, *, passed=True, threads=None):
    return {"provider": provider, "precision": precision, "latency_ms": ms, "batch": 1,
            "threads": threads, "fidelity_pass": passed, "device": "CPU",
            "sha256": art.entry(precision)["sha256"]}


def test_tuning_json_wins_for_this_machine_only(art, no_intel_gpu):
    sl.record_tuning(art, [_measure(art, "cpu", "fp32", 3.1, threads=2),
                           _measure(art, "openvino", "int8", 4.0)])
    s = select(artifact=art, statuses=_st(), cpu=CPU_VNNI)
    assert (s.provider, s.precision, s.threads) == ("cpu", "fp32", 2) and s.tuned
    assert "tuned" in s.reason
    # an explicit provider uses its own measurement, not another engine's
    s = select("openvino", artifact=art, statuses=_st(), cpu=CPU_VNNI)
    assert (s.precision, s.tuned) == ("int8", True)
    # another machine's section is not this machine's
    data = json.loads((art.dir / sl.TUNING_FILE).read_text())
    data["machines"] = {"someothermachine": data["machines"][sl.tuning_key()]}
    (art.dir / sl.TUNING_FILE).write_text(json.dumps(data))
    s = select(artifact=art, statuses=_st(), cpu=CPU_VNNI)
    assert s.provider == "openvino" and not s.tuned


def test_tuning_pick_is_keyed_to_the_measured_file(art, no_intel_gpu):
    sl.record_tuning(art, [_measure(art, "cpu", "int8", 1.0), _measure(art, "cpu", "fp32", 5.0)])
    assert select(artifact=art, statuses=_st(), cpu=CPU_AMD).precision == "int8"
    # the INT8 file is replaced (e.g. `quantize --target openvino`): its measurement is stale
    m = json.loads((art.dir / "manifest.json").read_text())
    m["files"]["int8"]["sha256"] = "0" * 64
    (art.dir / "manifest.json").write_text(json.dumps(m))
    s = select(artifact=Artifact(art.dir), statuses=_st(), cpu=CPU_AMD)
    assert (s.provider, s.precision) == ("cpu", "fp32") and "earlier int8 file" in s.reason


def test_old_tuning_file_is_ignored_and_said(art, no_intel_gpu):
    (art.dir / sl.TUNING_FILE).write_text(json.dumps({sl.tuning_key(): {"provider": "cpu"}}))
    s = select(artifact=art, statuses=_st(), cpu=CPU_AMD)
    assert not s.tuned and "older edgeinfer" in s.reason


def test_a_partial_bench_keeps_the_other_measurements(art):
    sl.record_tuning(art, [_measure(art, "cpu", "fp32", 5.0), _measure(art, "openvino", "fp32", 4.0)])
    sl.record_tuning(art, [_measure(art, "cpu", "fp32", 3.0)])
    got = sl.read_tuning(art)
    assert set(got) == {"cpu/fp32", "openvino/fp32"}
    assert got["cpu/fp32"]["latency_ms"] == 3.0 and got["openvino/fp32"]["latency_ms"] == 4.0


def test_failed_fidelity_is_never_the_tuned_pick(art, no_intel_gpu):
    sl.record_tuning(art, [_measure(art, "cpu", "int8", 1.0, passed=False),
                           _measure(art, "cpu", "fp32", 5.0)])
    assert select(artifact=art, statuses=_st(), cpu=CPU_AMD).precision == "fp32"


def test_tuned_engine_not_installed_is_said_in_the_reason(art, monkeypatch, no_intel_gpu):
    sl.record_tuning(art, [_measure(art, "openvino", "int8", 1.0), _measure(art, "cpu", "fp32", 5.0)])
    monkeypatch.setattr(pv, "openvino_installed", lambda: False)
    s = select(artifact=art, statuses=_st(ov=False), cpu=CPU_AMD)
    assert (s.provider, s.precision, s.tuned) == ("cpu", "fp32", True)
    assert "openvino/int8" in s.reason and "not usable here" in s.reason


def test_explicit_missing_provider_raises_with_install_hint(art, no_intel_gpu):
    with pytest.raises(ProviderUnavailableError, match=r"edgeinfer\[gpu\]' tensorrt"):
        select("tensorrt", artifact=art, statuses=_st())
    with pytest.raises(ProviderUnavailableError, match=r"edgeinfer\[openvino\]"):
        select("openvino", artifact=art, statuses=_st(ov=False))
    with pytest.raises(ProviderUnavailableError, match="GPU"):
        select("openvino:GPU", artifact=art, statuses=_st())
    s = select("cuda:1", artifact=art, statuses=_st(cuda=True))
    assert s.device == "cuda:1"


def test_unknown_names_list_valid_ones(art):
    with pytest.raises(InvalidOptionError, match="auto, cpu, cuda, tensorrt, openvino"):
        select("tpu", artifact=art)
    with pytest.raises(InvalidOptionError, match="auto, fp32, fp16, int8"):
        select("cpu", artifact=art, precision="int4")
    with pytest.raises(InvalidOptionError):
        create_session("x.onnx", provider="directml")


def test_requested_precision_missing_from_artifact(tmp_path, no_intel_gpu):
    from edgeinfer.errors import ArtifactError

    art = Artifact(tiny_artifact(tmp_path / "f", precisions=("fp32",)))
    with pytest.raises(ArtifactError, match="no int8"):
        select("cpu", artifact=art, precision="int8", statuses=_st())


def test_detect_reports_every_engine_with_reasons():
    st = {s.name: s for s in pv.detect()}
    assert set(st) == {"cpu", "cuda", "tensorrt", "openvino"}
    assert st["cpu"].available
    for s in st.values():
        assert s.reason and (s.available or s.install)
    if not pv.nvidia_driver()[0]:
        assert not st["cuda"].available and "NVIDIA" in st["cuda"].reason


# ----------------------------------------------------------------- real engines on this machine
def _x(n=5, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


@pytest.mark.openvino
def test_ort_and_openvino_agree(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    m = tiny_onnx(tmp_path / "m.onnx")
    x = _x()
    with create_session(m, provider="cpu", options=SessionOptions(threads=1)) as a, \
            create_session(m, provider="openvino", precision="fp32") as b:
        ya, yb = a.run(x), b.run(x)
        assert a.inputs[0].name == b.inputs[0].name == "pixel_values"
        assert b.cache_hit is False
    cos = (ya * yb).sum(1) / np.linalg.norm(ya, axis=1) / np.linalg.norm(yb, axis=1)
    assert cos.min() >= 0.9999 and (ya.argmax(1) == yb.argmax(1)).all()
    with create_session(m, provider="openvino", precision="fp32") as c:
        assert c.cache_hit is True  # second start uses the model cache
        assert np.allclose(c.run(x), yb, atol=1e-5)
        assert c.describe()["batch1_static"] is False
    # opt-in: batch 1 goes through a static batch-1 model, larger batches through the dynamic one
    with create_session(m, provider="openvino", precision="fp32",
                        options=SessionOptions(batch1_static=True)) as d:
        assert d.describe()["batch1_static"] is True and d.inputs[0].shape[0] == "batch"
        assert np.allclose(d.run(x[2:3]), yb[2:3], atol=1e-5)
        assert np.allclose(d.run(x), yb, atol=1e-5)
    assert (d.cache_dir / "static-b1.xml").exists()


@pytest.mark.openvino
def test_openvino_static_batch_chunks_and_pads(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    m = tiny_onnx(tmp_path / "m.onnx")
    x = _x(7)
    with create_session(m, provider="openvino", options=SessionOptions(static_batch=3)) as s:
        assert s.static_batch == 3
        y = s.run(x)
    with create_session(m, provider="cpu") as r:
        assert np.allclose(y, r.run(x), atol=1e-4)


@pytest.mark.parametrize("provider", ["cpu", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_sessions_are_safe_for_concurrent_calls(tmp_path, monkeypatch, provider):
    if provider == "openvino":
        pytest.importorskip("openvino")
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    s = create_session(tiny_onnx(tmp_path / "m.onnx"), provider=provider, precision="fp32",
                       options=SessionOptions(batch1_static=provider == "openvino"))
    xs = [_x(1 + i % 3, seed=i) for i in range(6)]  # batch 1 (static model on OpenVINO) and 2-3
    ref = [s.run(x) for x in xs]
    errors, out = [], {}

    def worker(t):
        try:
            for _ in range(5):
                for i, x in enumerate(xs):
                    y = s.run(x)
                    if not np.allclose(y, ref[i], atol=1e-5):
                        errors.append((t, i))
            out[t] = True
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(out) == 4


def _gpu_ready(provider):
    try:
        st = {s.name: s for s in pv.detect()}
    except Exception as e:  # pragma: no cover
        return False, str(e)
    return st[provider].available, st[provider].reason


@pytest.mark.gpu
def test_cuda_session_on_gpu(tmp_path):
    ok, why = _gpu_ready("cuda")
    if not ok:
        pytest.skip(f"no usable CUDA provider: {why}")
    m = tiny_onnx(tmp_path / "m.onnx")
    x = _x()
    with create_session(m, provider="cuda") as g, create_session(m, provider="cpu") as c:
        assert np.allclose(g.run(x), c.run(x), atol=1e-3)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_session_engine_cache(tmp_path):
    ok, why = _gpu_ready("tensorrt")
    if not ok:
        pytest.skip(f"no usable TensorRT provider: {why}")
    m = tiny_onnx(tmp_path / "m.onnx")
    opts = SessionOptions(cache_dir=str(tmp_path / "cache"), precision="fp16",
                          input_shapes={"pixel_values": (3, 32, 32)})
    x = _x()
    with create_session(m, provider="tensorrt", options=opts) as t, create_session(m, provider="cpu") as c:
        assert t.cache_hit is False
        y = t.run(x)
        ref = c.run(x)
    cos = (y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999
    with create_session(m, provider="tensorrt", options=opts) as t2:
        assert t2.cache_hit is True


def test_gpu_detection_with_mocked_machine(monkeypatch):
    import onnxruntime

    eps = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: eps)
    monkeypatch.setattr(pv, "nvidia_driver", lambda: (True, "NVIDIA driver: 550.54"))
    monkeypatch.setattr(pv, "nvidia_gpus", lambda: ("cuda:0 NVIDIA H100", "cuda:1 NVIDIA H100"))
    monkeypatch.setattr(pv, "onnxruntime_dists", lambda: {"onnxruntime-gpu": "1.22.0"})
    monkeypatch.setattr(pv, "tensorrt_libs", lambda: (False, "TensorRT libraries not found"))
    st = {s.name: s for s in pv._detect_ort()}
    assert st["cuda"].available and st["cuda"].devices == ["cuda:0", "cuda:1"]
    assert not st["tensorrt"].available and "TensorRT libraries not found" in st["tensorrt"].reason
    monkeypatch.setattr(pv, "tensorrt_libs", lambda: (True, "TensorRT python package 'tensorrt' found"))
    st = {s.name: s for s in pv._detect_ort()}
    assert st["tensorrt"].available
    # auto goes to TensorRT without touching OpenVINO
    monkeypatch.setattr(pv, "_detect_openvino", lambda: pytest.fail("openvino probed"))
    s = select(statuses=None, cpu=CPU_VNNI)
    assert (s.provider, s.device) == ("tensorrt", "cuda:0")
    # the driver is there but this onnxruntime is the CPU build
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    st = {s.name: s for s in pv._detect_ort()}
    assert not st["cuda"].available and "onnxruntime-gpu" in st["cuda"].reason


def test_two_onnxruntime_packages_are_flagged(monkeypatch):
    monkeypatch.setattr(pv, "onnxruntime_dists", lambda: {"onnxruntime": "1.22", "onnxruntime-gpu": "1.22"})
    st = {s.name: s for s in pv._detect_ort()}
    assert "overwrite each other" in st["cpu"].reason


def test_openvino_fp16_file_runs_in_the_cpus_half_type(monkeypatch):
    """An FP16 file on a CPU with bf16 units computes in bf16; FP32/INT8 files stay f32; a CPU
    without a half type runs the FP16 file in f32."""
    from edgeinfer.backends import openvino as ov

    monkeypatch.setattr(ov, "cpu_half_precision", lambda: "bf16")
    assert ov.compile_config(device="CPU", precision="fp16")["INFERENCE_PRECISION_HINT"] == "bf16"
    assert ov.compile_config(device="CPU", precision="fp32")["INFERENCE_PRECISION_HINT"] == "f32"
    assert ov.compile_config(device="CPU", precision="int8")["INFERENCE_PRECISION_HINT"] == "f32"
    monkeypatch.setattr(ov, "cpu_half_precision", lambda: None)
    assert ov.compile_config(device="CPU", precision="fp16")["INFERENCE_PRECISION_HINT"] == "f32"


def test_int8_guard_record_the_quantizer_writes(tmp_path, generated_images_dir):
    """The guard is read from a record `edgeinfer quantize` really produced, not a made-up one."""
    pytest.importorskip("onnxruntime.quantization")
    from edgeinfer.quantize import quantize_artifact

    d = tiny_artifact(tmp_path / "q", precisions=("fp32",))
    entry = quantize_artifact(d, int8=True, calib=generated_images_dir)["int8"]
    ok, why = sl.int8_guard(entry)
    assert ok and "passed" in why and entry["quantization"]["budget"]["text"] in why
    # the same record with fidelity outside its budget reads as failed
    worse = {**entry, "fidelity": {**entry["fidelity"], "cosine_mean": 0.5}}
    ok, why = sl.int8_guard(worse)
    assert not ok and "FAILED" in why
    assert sl.int8_guard({"file": "model.int8.onnx"})[1].startswith("INT8 file has no guard record")
    assert sl.int8_guard(None) == (False, "no INT8 file")


def test_engine_options_for_tensorrt_carry_the_batch_profile(art):
    sel = sl.Selection("tensorrt", "cuda:1", "int8", "test", batch_size=16)
    o = sl.engine_options(sel, art, threads=2)
    assert (o.precision, o.device, o.threads) == ("int8", "cuda:1", 2)
    assert o.model_sha256 == art.entry("int8")["sha256"]
    assert o.input_shapes == {"pixel_values": (3, 32, 32)}
    assert (o.opt_batch, o.max_batch) == (16, sl.TRT_MIN_MAX_BATCH)
    assert sl.engine_options(sel, art, batch_size=64).max_batch == 64
    cpu = sl.engine_options(sl.Selection("cpu", "CPU", "fp32", "test"), art,
                            overrides={"session_config": {"a": "b"}})
    assert cpu.device is None and cpu.input_shapes is None and cpu.session_config == {"a": "b"}
    with pytest.raises(InvalidOptionError, match="unknown engine option"):
        sl.engine_options(sel, art, overrides={"fp16": True})


def test_device_is_parsed_once():
    assert sl.parse_provider("openvino:gpu") == ("openvino", "GPU")
    assert sl.parse_provider("openvino", "NPU") == ("openvino", "NPU")
    assert sl.parse_provider("cuda", 1) == ("cuda", "cuda:1")
    assert sl.parse_provider("tensorrt:2") == ("tensorrt", "cuda:2")
    with pytest.raises(InvalidOptionError, match="explicit provider"):
        sl.parse_provider("auto", "GPU")
    with pytest.raises(InvalidOptionError, match="GPU index"):
        sl.parse_provider("cuda", "GPU")


def test_cli_providers_reads_at_80_columns(capsys):
    from edgeinfer.cli.main import main

    assert main(["providers"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    for name in ("cpu", "cuda", "tensorrt", "openvino"):
        assert f"{name}: " in out
    assert "auto picks" in out
