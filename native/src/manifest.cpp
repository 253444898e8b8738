// manifest.json: parsed with nlohmann-json and validated as edgeinfer/runtime/artifact.py does
// (format, format_version), plus the fields the native runner relies on, so a malformed artifact
// is one clear ArtifactError naming the field instead of a crash later.
#include <cmath>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "edgeinfer/edgeinfer.hpp"

namespace edgeinfer {
namespace {

using nlohmann::json;

constexpr const char* kFormat = "edgeinfer-artifact";
constexpr int kFormatVersion = 1;

bool is_dir(const std::string& p) {
    struct stat st{};
    return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool exists(const std::string& p) {
    struct stat st{};
    return ::stat(p.c_str(), &st) == 0;
}

[[noreturn]] void bad(const std::string& mpath, const std::string& what) {
    throw ArtifactError(mpath + ": " + what + "; re-export the model with `edgeinfer export`.");
}

const json& need(const json& obj, const char* key, const std::string& mpath, const std::string& where) {
    if (!obj.is_object() || !obj.contains(key) || obj.at(key).is_null())
        bad(mpath, "missing \"" + std::string(key) + "\" in " + where);
    return obj.at(key);
}

void three_floats(const json& v, float out[3], const char* name, const std::string& mpath) {
    if (!v.is_array() || v.size() != 3) bad(mpath, std::string("preprocess.") + name + " must be a list of 3 numbers");
    for (int i = 0; i < 3; i++) {
        if (!v[i].is_number()) bad(mpath, std::string("preprocess.") + name + " must be a list of 3 numbers");
        // numpy does the arithmetic in float32 (np.asarray(spec[...], np.float32)); so do we
        out[i] = static_cast<float>(v[i].get<double>());
        if (!std::isfinite(out[i])) bad(mpath, std::string("preprocess.") + name + " has a non-finite value");
    }
}

}  // namespace

Manifest read_manifest(const std::string& artifact_dir) {
    std::string d = artifact_dir;
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    if (!exists(d))
        throw ArtifactError("artifact directory " + d + " does not exist. Create one with "
                            "`edgeinfer export --model NAME --out " + d + "`.");
    if (!is_dir(d))
        throw ArtifactError(d + " is not a directory; an artifact is a directory with manifest.json.");
    std::string mpath = d + "/manifest.json";
    if (!exists(mpath))
        throw ArtifactError(d + " has no manifest.json: not an edgeinfer artifact (or an interrupted "
                            "export). Re-export with `edgeinfer export`.");
    json m;
    {
        std::ifstream f(mpath);
        if (!f) throw ArtifactError(mpath + " is unreadable; check its permissions.");
        try {
            f >> m;
        } catch (const json::exception& e) {
            throw ArtifactError(mpath + " is not valid JSON (" + e.what() + "); re-export the model.");
        }
    }
    if (!m.is_object()) bad(mpath, "the manifest is not a JSON object");
    if (!m.contains("format") || m["format"] != kFormat)
        throw ArtifactError(mpath + " is not an edgeinfer manifest (format=" +
                            (m.contains("format") ? m["format"].dump() : std::string("None")) + ").");
    int version = m.value("format_version", 0);
    if (version > kFormatVersion)
        throw ArtifactError(mpath + " has format_version " + std::to_string(version) +
                            ", newer than this edgeinfer-run understands (" + std::to_string(kFormatVersion) +
                            "); rebuild edgeinfer-run from a newer edgeinfer.");

    Manifest out;
    out.dir = d;
    try {
        const json& model = need(m, "model", mpath, "the manifest");
        out.name = need(model, "name", mpath, "model").get<std::string>();
        out.kind = model.value("kind", std::string("classifier"));
        if (m.contains("weights") && m["weights"].is_object())
            out.weights_origin = m["weights"].value("origin", std::string("unknown"));

        const json& pp = need(m, "preprocess", mpath, "the manifest");
        const json& size = need(pp, "input_size", mpath, "preprocess");
        if (!size.is_array() || size.size() != 3 || !size[0].is_number_integer() ||
            !size[1].is_number_integer() || !size[2].is_number_integer())
            bad(mpath, "preprocess.input_size must be [C, H, W] integers");
        Preprocess& p = out.preprocess;
        p.channels = size[0].get<int>();
        p.height = size[1].get<int>();
        p.width = size[2].get<int>();
        if (p.channels != 3) bad(mpath, "preprocess.input_size has " + std::to_string(p.channels) +
                                            " channels; only 3-channel (RGB) models are supported");
        if (p.height < 1 || p.width < 1 || p.height > 16384 || p.width > 16384)
            bad(mpath, "preprocess.input_size has an impossible size");
        const json& rs = need(pp, "resize_size", mpath, "preprocess");
        if (!rs.is_number()) bad(mpath, "preprocess.resize_size must be an integer");
        p.resize_size = static_cast<int>(rs.get<double>());  // Python: int(spec["resize_size"])
        if (p.resize_size < 1 || p.resize_size > 65536) bad(mpath, "preprocess.resize_size must be >= 1");
        p.interpolation = pp.value("interpolation", std::string("bilinear"));
        static const char* interps[] = {"bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"};
        bool known = false;
        for (auto* i : interps) known |= p.interpolation == i;
        if (!known) bad(mpath, "preprocess.interpolation '" + p.interpolation +
                                   "' is unknown (valid: bilinear, bicubic, nearest, lanczos, box, hamming)");
        three_floats(need(pp, "mean", mpath, "preprocess"), p.mean, "mean", mpath);
        three_floats(need(pp, "std", mpath, "preprocess"), p.std, "std", mpath);
        for (float s : p.std)
            if (s == 0.f) bad(mpath, "preprocess.std has a zero");
        std::string crop = pp.value("crop", std::string("center"));
        if (crop != "center") bad(mpath, "preprocess.crop '" + crop + "' is not supported (only 'center')");
        std::string order = pp.value("channel_order", std::string("RGB"));
        if (order != "RGB" && order != "BGR") bad(mpath, "preprocess.channel_order must be RGB or BGR");
        p.bgr = order == "BGR";
        std::string layout = pp.value("layout", std::string("NCHW"));
        if (layout != "NCHW") bad(mpath, "preprocess.layout '" + layout + "' is not supported (only NCHW)");

        const json& o = need(m, "output", mpath, "the manifest");
        out.output_kind = o.value("kind", std::string("logits"));
        if (out.output_kind != "logits" && out.output_kind != "embedding")
            bad(mpath, "output.kind must be 'logits' or 'embedding' (got '" + out.output_kind + "')");
        if (o.contains("dim") && o["dim"].is_number_integer()) out.output_dim = o["dim"].get<int>();

        if (m.contains("labels") && !m["labels"].is_null()) {
            if (!m["labels"].is_array()) bad(mpath, "labels must be a list of strings or null");
            for (const auto& l : m["labels"]) {
                if (!l.is_string()) bad(mpath, "labels must be a list of strings or null");
                out.labels.push_back(l.get<std::string>());
            }
        }

        const json& files = need(m, "files", mpath, "the manifest");
        if (!files.is_object()) bad(mpath, "files must be an object (precision -> file entry)");
        for (auto it = files.begin(); it != files.end(); ++it) {
            const std::string& prec = it.key();
            if (prec != "fp32" && prec != "fp16" && prec != "int8")
                bad(mpath, "files has an unknown precision '" + prec + "'");
            const json& e = it.value();
            FileEntry fe;
            fe.precision = prec;
            fe.file = need(e, "file", mpath, "files." + prec).get<std::string>();
            if (fe.file.empty() || fe.file.find('/') != std::string::npos || fe.file == "..")
                bad(mpath, "files." + prec + ".file must be a file name inside the artifact");
            fe.sha256 = need(e, "sha256", mpath, "files." + prec).get<std::string>();
            if (fe.sha256.size() != 64) bad(mpath, "files." + prec + ".sha256 is not a sha256 hex digest");
            if (e.contains("inputs") && e["inputs"].is_array() && !e["inputs"].empty() &&
                e["inputs"][0].is_object())
                fe.input_name = e["inputs"][0].value("name", std::string());
            out.files.push_back(fe);
        }
    } catch (const json::exception& e) {
        bad(mpath, std::string("a field has the wrong type (") + e.what() + ")");
    }
    return out;
}

}  // namespace edgeinfer
