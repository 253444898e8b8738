// Model: an artifact's image tower compiled with OpenVINO's C++ API, with the same compile
// settings as edgeinfer/backends/openvino.py (LATENCY hint, f32 compute for FP32/INT8 files on
// the CPU, the CPU's half type for FP16 files, the model cache in the same directory layout), so
// "same engine, same precision" really is the same computation as the Python runtime's.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <sys/stat.h>

#include <openvino/runtime/core.hpp>

#include "edgeinfer/edgeinfer.hpp"

namespace edgeinfer {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::string upper(std::string s) {
    for (auto& c : s) c = char(std::toupper((unsigned char)c));
    return s;
}

// backends/cache.py _slug: runs of characters outside [A-Za-z0-9._-] become one "_"
std::string slug(const std::string& s) {
    std::string out;
    bool run = false;
    for (char c : s) {
        bool ok = std::isalnum((unsigned char)c) || c == '.' || c == '_' || c == '-';
        if (ok) { out += c; run = false; }
        else if (!run) { out += '_'; run = true; }
    }
    while (!out.empty() && out.front() == '_') out.erase(out.begin());
    while (!out.empty() && out.back() == '_') out.pop_back();
    return out.empty() ? "x" : out;
}

void mkdirs(const std::string& path) {
    std::string cur;
    for (size_t i = 0; i <= path.size(); i++) {
        if (i == path.size() || path[i] == '/') {
            if (!cur.empty()) ::mkdir(cur.c_str(), 0777);
        }
        if (i < path.size()) cur += path[i];
    }
}

// backends/cache.py cache_root(): $EDGEINFER_CACHE, else $XDG_CACHE_HOME/edgeinfer, else ~/.cache/edgeinfer
std::string cache_root(const std::string& given) {
    if (!given.empty()) return given;
    if (const char* e = std::getenv("EDGEINFER_CACHE"); e && *e) return e;
    if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/edgeinfer";
    const char* home = std::getenv("HOME");
    return std::string(home && *home ? home : "/tmp") + "/.cache/edgeinfer";
}

}  // namespace

std::string version() { return "0.1.0"; }

std::string engine_version() {
    std::string b = ov::get_openvino_version().buildNumber;
    return b.substr(0, b.find('-'));  // as openvino_version(): "2026.4.1"
}

struct Model::Impl {
    Manifest manifest;
    Options options;
    std::string device;
    ov::Core core;
    ov::CompiledModel compiled;
    ov::InferRequest request;
    ov::element::Type in_type;
    std::mutex mutex;  // one infer request: one inference at a time
};

Model::Model() : impl_(new Impl) {}
Model::~Model() = default;

const Manifest& Model::manifest() const { return impl_->manifest; }
const Options& Model::options() const { return impl_->options; }
const std::string& Model::device() const { return impl_->device; }

DecodeOptions Model::decode_options() const {
    DecodeOptions d;
    // preprocess._draft_size: int(resize_size * DRAFT_SAFETY), DRAFT_SAFETY = 2.0
    d.draft_size = impl_->options.draft ? int(impl_->manifest.preprocess.resize_size * 2.0) : 0;
    return d;
}

std::unique_ptr<Model> Model::open(const std::string& artifact_dir, const Options& options) {
    const std::string prec = options.precision;
    if (prec != "fp32" && prec != "fp16" && prec != "int8")
        throw OptionError("unknown precision '" + prec + "'; valid precisions: fp32, fp16, int8");
    if (options.threads < 0) throw OptionError("threads must be >= 0 (0: OpenVINO's default)");
    std::string device = upper(options.device.empty() ? "CPU" : options.device);
    std::string base = device.substr(0, device.find_first_of(".:"));
    if (base != "CPU" && base != "GPU" && base != "NPU" && base != "AUTO")
        throw OptionError("unknown OpenVINO device '" + options.device + "'; valid devices: CPU, GPU, NPU, AUTO");

    std::unique_ptr<Model> m(new Model());
    Impl& I = *m->impl_;
    I.options = options;
    I.device = device;
    I.manifest = read_manifest(artifact_dir);
    const FileEntry* e = I.manifest.file(prec);
    if (!e) {
        std::string have;
        for (const auto& f : I.manifest.files) have += (have.empty() ? "" : ", ") + f.precision;
        std::string hint = prec == "fp32" ? "re-export the model"
                                          : "create it with `edgeinfer quantize " + I.manifest.dir + " --" + prec + "`";
        throw ArtifactError("artifact " + I.manifest.dir + " has no " + prec + " image file (it has: " +
                            (have.empty() ? "none" : have) + "); " + hint + ".");
    }
    const std::string path = I.manifest.dir + "/" + e->file;
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0)
        throw ArtifactError(path + " is listed in the manifest but missing; re-export the model or "
                            "re-run `edgeinfer quantize`.");
    if (options.verify && sha256_file(path) != e->sha256)
        throw ArtifactError(path + " does not match its sha256 in the manifest (file is corrupt or was "
                            "modified); re-export the model.");

    try {
        std::vector<std::string> avail = I.core.get_available_devices();
        bool found = base == "AUTO";
        for (const auto& d : avail) found |= d == device || d.substr(0, d.find('.')) == device;
        if (!found) {
            std::string list;
            for (const auto& d : avail) list += (list.empty() ? "" : ", ") + d;
            throw EngineError("OpenVINO device '" + device + "' is not available here (available: " +
                              (list.empty() ? "none" : list) + "). GPU needs an Intel GPU and its compute "
                              "runtime (intel-opencl-icd / level-zero); NPU needs the intel_vpu driver.");
        }
        ov::AnyMap cfg;
        cfg[ov::hint::performance_mode.name()] = ov::hint::PerformanceMode::LATENCY;
        if (options.threads > 0 && base == "CPU") cfg[ov::inference_num_threads.name()] = options.threads;
        if (base == "CPU" && prec == "fp16") {
            // backends/openvino.compile_config: an FP16 file asks for the CPU's half type when it has one
            auto caps = I.core.get_property("CPU", ov::device::capabilities);
            auto has = [&](const char* c) { return std::find(caps.begin(), caps.end(), c) != caps.end(); };
            cfg[ov::hint::inference_precision.name()] =
                has("FP16") ? ov::element::f16 : has("BF16") ? ov::element::bf16 : ov::element::f32;
        } else if (base == "CPU" || (prec == "fp32" && base == "GPU")) {
            // f32 compute: OpenVINO would otherwise silently use bf16 on CPUs with AVX512-BF16/AMX
            cfg[ov::hint::inference_precision.name()] = ov::element::f32;
        } else if (prec == "fp16" && base == "GPU") {
            cfg[ov::hint::inference_precision.name()] = ov::element::f16;
        }
        if (options.use_cache) {
            // backends/cache.engine_cache_dir: <root>/openvino/<sha[:16]>-<version>-<device>-<precision>
            std::string dir = cache_root(options.cache_dir) + "/openvino/" + e->sha256.substr(0, 16) + "-" +
                              slug(engine_version()) + "-" + slug(device + "-" + prec);
            mkdirs(dir);
            cfg[ov::cache_dir.name()] = dir;
        }
        // compiling from the path lets a model-cache hit skip reading the ONNX file
        I.compiled = I.core.compile_model(path, device, cfg);
        I.request = I.compiled.create_infer_request();
        if (I.compiled.inputs().size() != 1)
            throw ArtifactError(path + " has " + std::to_string(I.compiled.inputs().size()) +
                                " inputs; an image model has one (pixel_values)");
        I.in_type = I.compiled.input().get_element_type();
        if (I.in_type != ov::element::f32 && I.in_type != ov::element::f16)
            throw ArtifactError(path + " takes " + I.in_type.get_type_name() + " input; expected float32 or float16");
    } catch (const Error&) {
        throw;
    } catch (const std::exception& ex) {
        if (base == "CPU")  // the CPU plugin is always there: the model itself is the problem
            throw ArtifactError("OpenVINO cannot load " + path + ": " + ex.what());
        throw EngineError("OpenVINO could not compile " + e->file + " for " + device + ": " + ex.what());
    }
    return m;
}

std::vector<float> Model::infer(const std::vector<float>& chw) {
    Impl& I = *impl_;
    const Preprocess& p = I.manifest.preprocess;
    const size_t n = size_t(3) * p.height * p.width;
    if (chw.size() != n) throw OptionError("input tensor has " + std::to_string(chw.size()) +
                                           " values; the model takes 3x" + std::to_string(p.height) + "x" +
                                           std::to_string(p.width));
    std::lock_guard<std::mutex> lock(I.mutex);
    ov::Shape shape{1, 3, size_t(p.height), size_t(p.width)};
    try {
        ov::Tensor input;
        if (I.in_type == ov::element::f32) {
            input = ov::Tensor(ov::element::f32, shape, const_cast<float*>(chw.data()));
        } else {
            input = ov::Tensor(ov::element::f16, shape);
            auto* d = input.data<ov::float16>();
            for (size_t i = 0; i < n; i++) d[i] = ov::float16(chw[i]);
        }
        I.request.set_input_tensor(input);
        I.request.infer();
        ov::Tensor out = I.request.get_output_tensor(0);
        const size_t m = out.get_size();
        std::vector<float> row(m);
        if (out.get_element_type() == ov::element::f32) {
            std::copy_n(out.data<const float>(), m, row.begin());
        } else if (out.get_element_type() == ov::element::f16) {
            const auto* s = out.data<const ov::float16>();
            for (size_t i = 0; i < m; i++) row[i] = float(s[i]);
        } else {
            throw EngineError(std::string("unexpected output type ") + out.get_element_type().get_type_name());
        }
        return row;
    } catch (const Error&) {
        throw;
    } catch (const std::exception& ex) {
        throw EngineError(std::string("OpenVINO inference failed: ") + ex.what());
    }
}

std::vector<float> Model::run(const Image& image, Timing* timing) {
    auto t0 = Clock::now();
    std::vector<float> chw = preprocess(image, impl_->manifest.preprocess);
    if (timing) timing->preprocess_ms = ms_since(t0);
    auto t1 = Clock::now();
    std::vector<float> out = infer(chw);
    if (timing) timing->infer_ms = ms_since(t1);
    return out;
}

std::vector<float> Model::run_encoded(const uint8_t* data, size_t size, Timing* timing) {
    auto t0 = Clock::now();
    Image im = decode_image(data, size, decode_options());
    if (timing) timing->decode_ms = ms_since(t0);
    return run(im, timing);
}

std::vector<float> Model::run_file(const std::string& path, Timing* timing) {
    auto t0 = Clock::now();
    Image im = read_image(path, decode_options());
    if (timing) timing->decode_ms = ms_since(t0);
    return run(im, timing);
}

std::vector<Prediction> Model::top_k(const std::vector<float>& logits, int k) const {
    if (impl_->manifest.output_kind != "logits")
        throw OptionError(impl_->manifest.name + " outputs embeddings, not class logits; use the embedding");
    if (k < 1) throw OptionError("top_k must be >= 1 (got " + std::to_string(k) + ")");
    // runtime/model.softmax: float64, max subtracted
    double mx = -INFINITY;
    for (float v : logits) mx = std::max(mx, double(v));
    std::vector<double> p(logits.size());
    double sum = 0;
    for (size_t i = 0; i < logits.size(); i++) sum += (p[i] = std::exp(double(logits[i]) - mx));
    for (auto& v : p) v /= sum;
    std::vector<int> idx(p.size());
    for (size_t i = 0; i < idx.size(); i++) idx[i] = int(i);
    k = std::min<int>(k, int(idx.size()));
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    const auto& labels = impl_->manifest.labels;
    std::vector<Prediction> out;
    for (int i = 0; i < k; i++) {
        Prediction pr;
        pr.index = idx[i];
        pr.probability = p[idx[i]];
        pr.label = labels.size() == logits.size() ? labels[idx[i]] : "class_" + std::to_string(idx[i]);
        out.push_back(pr);
    }
    return out;
}

std::vector<float> Model::l2_normalize(const std::vector<float>& v) {
    // runtime/model.l2_normalize: x / max(||x||, 1e-12), in float32
    float ss = 0;
    for (float x : v) ss += x * x;
    float n = std::max(std::sqrt(ss), 1e-12f);
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); i++) out[i] = v[i] / n;
    return out;
}

}  // namespace edgeinfer
