// edgeinfer-run: classify or embed images with an edgeinfer artifact, natively (no Python).
//
//   edgeinfer-run ARTIFACT IMAGE... [--precision fp32|fp16|int8] [--device CPU|GPU|NPU|AUTO]
//                 [--top-k 5] [--json] [--raw] [--threads N] [--no-draft] [--no-cache]
//                 [--cache-dir DIR] [--no-verify] [--max-pixels N] [--dump-input DIR]
//                 [--preprocess-only]
//
// IMAGE: a JPEG/PNG file, a folder (its image files, recursively, sorted), or "-" (paths from
// stdin, one per line). A bad image is an error line for that image; the rest go on.
// Exit codes: 0 every image ok; 1 usage, artifact or engine error (nothing was processed);
// 3 at least one image failed (the others were processed).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <future>
#include <iostream>
#include <string>
#include <sys/stat.h>
#include <thread>
#include <vector>

#include "edgeinfer/edgeinfer.hpp"

namespace {

const char* kUsage =
    "usage: edgeinfer-run ARTIFACT IMAGE... [options]\n"
    "\n"
    "Classify (top-k labels) or embed (CLIP image tower) images with an edgeinfer artifact,\n"
    "on OpenVINO, with the Python runtime's exact preprocessing.\n"
    "\n"
    "  IMAGE                 JPEG/PNG file, folder (recursive), or - (paths from stdin)\n"
    "  --precision P         fp32 | fp16 | int8 (default fp32)\n"
    "  --device D            OpenVINO device: CPU | GPU | GPU.N | NPU | AUTO (default CPU)\n"
    "  --top-k K             labels per image (default 5)\n"
    "  --json                one JSON object per line: a header, then one per image\n"
    "  --raw                 also print the raw output row (logits / unnormalised embedding)\n"
    "  --threads N           CPU inference threads (default: OpenVINO's choice)\n"
    "  --no-draft            decode large JPEGs at full size (no DCT-domain downscaling)\n"
    "  --no-cache            do not use the OpenVINO model cache\n"
    "  --cache-dir DIR       engine cache root (default $EDGEINFER_CACHE or ~/.cache/edgeinfer)\n"
    "  --no-verify           skip the model file's sha256 check\n"
    "  --max-pixels N        decompression-bomb limit (default 89478485, PIL's; 0: none)\n"
    "  --dump-input DIR      write each preprocessed CHW float32 input to DIR/<n>.npy\n"
    "  --preprocess-only     decode + preprocess only (with --dump-input); no engine\n"
    "  --version             print versions and exit\n"
    "\n"
    "Exit codes: 0 all images ok; 1 usage/artifact/engine error; 3 some images failed.\n";

struct Args {
    std::string artifact;
    std::vector<std::string> inputs;
    edgeinfer::Options opt;
    int top_k = 5;
    bool json = false, raw = false, preprocess_only = false;
    long long max_pixels = 89478485LL;
    std::string dump_dir;
};

[[noreturn]] void usage_error(const std::string& msg) {
    std::fprintf(stderr, "error: %s\n\n%s", msg.c_str(), kUsage);
    std::exit(1);
}

int to_int(const std::string& flag, const std::string& v) {
    try {
        size_t pos = 0;
        long long x = std::stoll(v, &pos);
        if (pos != v.size() || x < -1000000000LL || x > 1000000000LL) throw std::invalid_argument(v);
        return int(x);
    } catch (const std::exception&) {
        usage_error(flag + " needs an integer (got '" + v + "')");
    }
}

Args parse(int argc, char** argv) {
    Args a;
    std::vector<std::string> pos;
    for (int i = 1; i < argc; i++) {
        std::string s = argv[i];
        auto value = [&](const char* flag) -> std::string {
            if (i + 1 >= argc) usage_error(std::string(flag) + " needs a value");
            return argv[++i];
        };
        if (s == "-h" || s == "--help") { std::fputs(kUsage, stdout); std::exit(0); }
        else if (s == "--version") {
            std::printf("edgeinfer-run %s (OpenVINO %s)\n", edgeinfer::version().c_str(),
                        edgeinfer::engine_version().c_str());
            std::exit(0);
        }
        else if (s == "--precision") a.opt.precision = value("--precision");
        else if (s == "--device") a.opt.device = value("--device");
        else if (s == "--top-k") a.top_k = to_int("--top-k", value("--top-k"));
        else if (s == "--threads") a.opt.threads = to_int("--threads", value("--threads"));
        else if (s == "--cache-dir") a.opt.cache_dir = value("--cache-dir");
        else if (s == "--max-pixels") a.max_pixels = std::atoll(value("--max-pixels").c_str());
        else if (s == "--dump-input") a.dump_dir = value("--dump-input");
        else if (s == "--json") a.json = true;
        else if (s == "--raw") a.raw = true;
        else if (s == "--no-draft") a.opt.draft = false;
        else if (s == "--no-cache") a.opt.use_cache = false;
        else if (s == "--no-verify") a.opt.verify = false;
        else if (s == "--preprocess-only") a.preprocess_only = true;
        else if (s.size() > 1 && s[0] == '-' && s != "-") usage_error("unknown option " + s);
        else pos.push_back(s);
    }
    if (pos.size() < 2) usage_error("give an artifact directory and at least one image");
    a.artifact = pos[0];
    a.inputs.assign(pos.begin() + 1, pos.end());
    if (a.top_k < 1) usage_error("--top-k must be >= 1 (got " + std::to_string(a.top_k) + ")");
    if (a.opt.precision != "fp32" && a.opt.precision != "fp16" && a.opt.precision != "int8")
        usage_error("unknown precision '" + a.opt.precision + "'; valid precisions: fp32, fp16, int8");
    if (a.preprocess_only && a.dump_dir.empty()) usage_error("--preprocess-only needs --dump-input DIR");
    return a;
}

bool is_dir(const std::string& p) {
    struct stat st{};
    return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// runtime/preprocess.list_images: the same extensions, recursive, sorted
void list_images(const std::string& dir, std::vector<std::string>& out) {
    static const char* exts[] = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"};
    std::vector<std::string> found;
    std::vector<std::string> stack{dir};
    while (!stack.empty()) {
        std::string d = stack.back();
        stack.pop_back();
        DIR* h = ::opendir(d.c_str());
        if (!h) continue;
        while (dirent* e = ::readdir(h)) {
            std::string name = e->d_name;
            if (name == "." || name == "..") continue;
            std::string p = d + (d.back() == '/' ? "" : "/") + name;
            if (is_dir(p)) { stack.push_back(p); continue; }
            std::string lower = name;
            for (auto& c : lower) c = char(std::tolower((unsigned char)c));
            for (auto* x : exts) {
                size_t n = std::strlen(x);
                if (lower.size() > n && lower.compare(lower.size() - n, n, x) == 0) { found.push_back(p); break; }
            }
        }
        ::closedir(h);
    }
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
}

std::string json_str(const std::string& s) {
    std::string o = "\"";
    for (unsigned char c : s) {
        switch (c) {
            case '"': o += "\\\""; break;
            case '\\': o += "\\\\"; break;
            case '\n': o += "\\n"; break;
            case '\r': o += "\\r"; break;
            case '\t': o += "\\t"; break;
            default:
                if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o += b; }
                else o += char(c);
        }
    }
    return o + "\"";
}

std::string floats(const std::vector<float>& v) {
    std::string o = "[";
    char b[32];
    for (size_t i = 0; i < v.size(); i++) {
        std::snprintf(b, sizeof b, "%s%.9g", i ? ", " : "", double(v[i]));  // round-trips float32
        o += b;
    }
    return o + "]";
}

bool write_npy(const std::string& path, const std::vector<float>& v, int c, int h, int w) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return false;
    std::string hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(c) + ", " +
                      std::to_string(h) + ", " + std::to_string(w) + "), }";
    while ((10 + hdr.size() + 1) % 64) hdr += ' ';
    hdr += '\n';
    const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    uint16_t len = uint16_t(hdr.size());
    bool ok = std::fwrite(magic, 1, 8, f) == 8 && std::fwrite(&len, 2, 1, f) == 1 &&
              std::fwrite(hdr.data(), 1, hdr.size(), f) == hdr.size() &&
              std::fwrite(v.data(), sizeof(float), v.size(), f) == v.size();
    return std::fclose(f) == 0 && ok;
}

struct Decoded {
    edgeinfer::Image image;
    std::string error;
    double decode_ms = 0;
};

using Clock = std::chrono::steady_clock;
double ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

}  // namespace

int main(int argc, char** argv) {
    const auto t_start = Clock::now();
    Args a = parse(argc, argv);

    std::vector<std::string> images;
    for (const auto& in : a.inputs) {
        if (in == "-") {
            std::string line;
            while (std::getline(std::cin, line))
                if (!line.empty()) images.push_back(line);
        } else if (is_dir(in)) {
            list_images(in, images);
        } else {
            images.push_back(in);
        }
    }
    if (images.empty()) {
        std::fprintf(stderr, "error: no images given (folders were empty)\n");
        return 1;
    }

    std::unique_ptr<edgeinfer::Model> model;
    edgeinfer::Manifest manifest;
    edgeinfer::DecodeOptions dopt;
    double load_ms = 0;
    try {
        if (a.preprocess_only) {
            manifest = edgeinfer::read_manifest(a.artifact);
            dopt.draft_size = a.opt.draft ? int(manifest.preprocess.resize_size * 2.0) : 0;
        } else {
            auto t0 = Clock::now();
            model = edgeinfer::Model::open(a.artifact, a.opt);
            load_ms = ms(t0, Clock::now());
            manifest = model->manifest();
            dopt = model->decode_options();
        }
    } catch (const edgeinfer::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    dopt.max_pixels = a.max_pixels;
    if (!a.dump_dir.empty() && !is_dir(a.dump_dir)) {
        std::fprintf(stderr, "error: --dump-input %s is not a directory\n", a.dump_dir.c_str());
        return 1;
    }
    const bool classifier = manifest.output_kind == "logits";

    if (a.json) {
        std::printf("{\"artifact\": %s, \"model\": %s, \"weights\": %s, \"engine\": %s, \"device\": %s, "
                    "\"precision\": %s, \"output\": %s, \"load_ms\": %.3f, \"images\": %zu}\n",
                    json_str(manifest.dir).c_str(), json_str(manifest.name).c_str(),
                    json_str(manifest.weights_origin).c_str(),
                    json_str(a.preprocess_only ? "none" : "openvino " + edgeinfer::engine_version()).c_str(),
                    json_str(model ? model->device() : "").c_str(), json_str(a.opt.precision).c_str(),
                    json_str(manifest.output_kind).c_str(), load_ms, images.size());
    } else if (!a.preprocess_only) {
        std::fprintf(stderr, "%s on openvino/%s/%s%s\n", manifest.name.c_str(), model->device().c_str(),
                     a.opt.precision.c_str(),
                     manifest.weights_origin == "random" ? " (random weights: labels are meaningless)" : "");
    }
    std::fflush(stdout);

    // decode ahead in a few threads (decoding is independent per image) while inference runs in order
    const size_t window = std::max(1u, std::min(4u, std::thread::hardware_concurrency()));
    std::vector<std::future<Decoded>> pending;
    size_t next = 0;
    auto launch = [&](size_t i) {
        return std::async(std::launch::async, [&, i] {
            Decoded d;
            auto t0 = Clock::now();
            try {
                d.image = edgeinfer::read_image(images[i], dopt);
            } catch (const std::exception& e) {
                d.error = e.what();
            }
            d.decode_ms = ms(t0, Clock::now());
            return d;
        });
    };
    size_t failed = 0;
    for (size_t i = 0; i < images.size(); i++) {
        while (next < images.size() && next < i + window) pending.push_back(launch(next++));
        Decoded d = pending.front().get();
        pending.erase(pending.begin());
        const std::string& path = images[i];
        edgeinfer::Timing t;
        t.decode_ms = d.decode_ms;
        std::vector<float> out;
        if (d.error.empty()) {
            try {
                if (a.preprocess_only || !a.dump_dir.empty()) {
                    auto t0 = Clock::now();
                    std::vector<float> chw = edgeinfer::preprocess(d.image, manifest.preprocess);
                    t.preprocess_ms = ms(t0, Clock::now());
                    const auto& p = manifest.preprocess;
                    std::string f = a.dump_dir + "/" + std::to_string(i) + ".npy";
                    if (!write_npy(f, chw, 3, p.height, p.width)) throw edgeinfer::Error("cannot write " + f);
                    if (!a.preprocess_only) {
                        auto t1 = Clock::now();
                        out = model->infer(chw);
                        t.infer_ms = ms(t1, Clock::now());
                    }
                } else {
                    out = model->run(d.image, &t);
                }
            } catch (const std::exception& e) {
                d.error = e.what();
            }
        }
        if (!d.error.empty()) {
            failed++;
            if (a.json) std::printf("{\"image\": %s, \"error\": %s}\n", json_str(path).c_str(), json_str(d.error).c_str());
            else std::fprintf(stderr, "error: %s: %s\n", path.c_str(), d.error.c_str());
            std::fflush(stdout);
            continue;
        }
        char timing[160];
        std::snprintf(timing, sizeof timing, "{\"decode\": %.3f, \"preprocess\": %.3f, \"infer\": %.3f, \"since_start\": %.3f}",
                      t.decode_ms, t.preprocess_ms, t.infer_ms, ms(t_start, Clock::now()));
        if (a.preprocess_only) {
            if (a.json) std::printf("{\"image\": %s, \"input\": %s, \"ms\": %s}\n", json_str(path).c_str(),
                                    json_str(a.dump_dir + "/" + std::to_string(i) + ".npy").c_str(), timing);
            else std::printf("%s -> %s/%zu.npy\n", path.c_str(), a.dump_dir.c_str(), i);
        } else if (classifier) {
            auto top = model->top_k(out, a.top_k);
            if (a.json) {
                std::string s = "{\"image\": " + json_str(path) + ", \"top\": [";
                char b[64];
                for (size_t j = 0; j < top.size(); j++) {
                    std::snprintf(b, sizeof b, "%.9g", top[j].probability);
                    s += (j ? ", " : "") + std::string("{\"label\": ") + json_str(top[j].label) +
                         ", \"index\": " + std::to_string(top[j].index) + ", \"probability\": " + b + "}";
                }
                s += "], \"ms\": " + std::string(timing);
                if (a.raw) s += ", \"output\": " + floats(out);
                std::printf("%s}\n", s.c_str());
            } else {
                std::printf("%s\n", path.c_str());
                for (const auto& p : top) std::printf("  %6.2f%%  %s\n", p.probability * 100.0, p.label.c_str());
                if (a.raw) std::printf("  logits %s\n", floats(out).c_str());
            }
        } else {
            auto emb = edgeinfer::Model::l2_normalize(out);
            if (a.json) {
                std::string s = "{\"image\": " + json_str(path) + ", \"embedding\": " + floats(emb) +
                                ", \"ms\": " + timing;
                if (a.raw) s += ", \"output\": " + floats(out);
                std::printf("%s}\n", s.c_str());
            } else {
                std::printf("%s\t%s\n", path.c_str(), floats(emb).c_str());
            }
        }
        std::fflush(stdout);
    }
    if (failed) std::fprintf(stderr, "%zu of %zu image(s) failed\n", failed, images.size());
    return failed ? 3 : 0;
}
