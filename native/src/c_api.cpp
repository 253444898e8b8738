// The C API (edgeinfer.h) over the C++ Model: exceptions become status codes + messages.
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>

#include "edgeinfer.h"
#include "edgeinfer/edgeinfer.hpp"

struct ei_model {
    std::unique_ptr<edgeinfer::Model> model;
};

namespace {

void put(char* err, size_t len, const std::string& msg) {
    if (err && len) std::snprintf(err, len, "%s", msg.c_str());
}

int guard(char* err, size_t len, const std::function<void()>& fn) {
    try {
        fn();
        put(err, len, "");
        return EI_OK;
    } catch (const edgeinfer::ImageError& e) {
        put(err, len, e.what());
        return EI_ERR_IMAGE;
    } catch (const edgeinfer::EngineError& e) {
        put(err, len, e.what());
        return EI_ERR_ENGINE;
    } catch (const edgeinfer::Error& e) {
        put(err, len, e.what());
        return EI_ERR_ARTIFACT;
    } catch (const std::exception& e) {
        put(err, len, std::string("internal error: ") + e.what());
        return EI_ERR_ENGINE;
    }
}

int classify(ei_model* m, int k, ei_prediction* out, int* n_out, char* err, size_t len,
             const std::function<std::vector<float>()>& run) {
    if (n_out) *n_out = 0;
    if (!m || !out || k < 1) { put(err, len, "need a model, an output array and k >= 1"); return EI_ERR_ARTIFACT; }
    if (m->model->manifest().output_kind != "logits") {
        put(err, len, m->model->manifest().name + " outputs embeddings, not class logits; use ei_embed_*");
        return EI_ERR_KIND;
    }
    return guard(err, len, [&] {
        auto preds = m->model->top_k(run(), k);
        const auto& labels = m->model->manifest().labels;
        static const char* none = "";
        for (size_t i = 0; i < preds.size(); i++) {
            out[i].index = preds[i].index;
            out[i].probability = float(preds[i].probability);
            // labels live in the manifest, owned by the model; class_N names are not stored there
            out[i].label = size_t(preds[i].index) < labels.size() ? labels[preds[i].index].c_str() : none;
        }
        if (n_out) *n_out = int(preds.size());
    });
}

int embed(ei_model* m, float* out, size_t out_len, char* err, size_t len,
          const std::function<std::vector<float>()>& run) {
    if (!m || !out) { put(err, len, "need a model and an output buffer"); return EI_ERR_ARTIFACT; }
    if (m->model->manifest().output_kind != "embedding") {
        put(err, len, m->model->manifest().name + " outputs class logits, not embeddings; use ei_classify_*");
        return EI_ERR_KIND;
    }
    int rc = EI_OK;
    int g = guard(err, len, [&] {
        auto v = edgeinfer::Model::l2_normalize(run());
        if (v.size() > out_len) {
            put(err, len, "output buffer holds " + std::to_string(out_len) + " floats; the embedding has " +
                              std::to_string(v.size()) + " (see ei_output_dim)");
            rc = EI_ERR_KIND;
            return;
        }
        std::memcpy(out, v.data(), v.size() * sizeof(float));
    });
    return rc != EI_OK ? rc : g;
}

edgeinfer::Image wrap_rgb(const uint8_t* rgb, int w, int h) {
    if (!rgb || w < 1 || h < 1) throw edgeinfer::ImageError("empty RGB image");
    edgeinfer::Image im;
    im.width = w;
    im.height = h;
    im.rgb.assign(rgb, rgb + size_t(w) * h * 3);
    return im;
}

}  // namespace

extern "C" {

ei_model* ei_open(const char* dir, const char* precision, const char* device, char* err, size_t len) {
    if (!dir) { put(err, len, "artifact_dir is NULL"); return nullptr; }
    ei_model* m = nullptr;
    guard(err, len, [&] {
        edgeinfer::Options o;
        if (precision) o.precision = precision;
        if (device) o.device = device;
        auto model = edgeinfer::Model::open(dir, o);
        m = new ei_model{std::move(model)};
    });
    return m;
}

void ei_close(ei_model* m) { delete m; }

int ei_is_classifier(const ei_model* m) { return m && m->model->manifest().output_kind == "logits"; }

size_t ei_output_dim(const ei_model* m) {
    if (!m) return 0;
    const auto& mf = m->model->manifest();
    if (mf.output_dim > 0) return size_t(mf.output_dim);
    return mf.labels.size();
}

const char* ei_model_name(const ei_model* m) { return m ? m->model->manifest().name.c_str() : ""; }

int ei_classify_file(ei_model* m, const char* path, int k, ei_prediction* out, int* n, char* err, size_t len) {
    return classify(m, k, out, n, err, len, [&] { return m->model->run_file(path ? path : ""); });
}
int ei_classify_encoded(ei_model* m, const uint8_t* data, size_t size, int k, ei_prediction* out, int* n,
                        char* err, size_t len) {
    return classify(m, k, out, n, err, len, [&] { return m->model->run_encoded(data, data ? size : 0); });
}
int ei_classify_rgb(ei_model* m, const uint8_t* rgb, int w, int h, int k, ei_prediction* out, int* n,
                    char* err, size_t len) {
    return classify(m, k, out, n, err, len, [&] { return m->model->run(wrap_rgb(rgb, w, h)); });
}
int ei_embed_file(ei_model* m, const char* path, float* out, size_t out_len, char* err, size_t len) {
    return embed(m, out, out_len, err, len, [&] { return m->model->run_file(path ? path : ""); });
}
int ei_embed_encoded(ei_model* m, const uint8_t* data, size_t size, float* out, size_t out_len, char* err,
                     size_t len) {
    return embed(m, out, out_len, err, len, [&] { return m->model->run_encoded(data, data ? size : 0); });
}
int ei_embed_rgb(ei_model* m, const uint8_t* rgb, int w, int h, float* out, size_t out_len, char* err,
                 size_t len) {
    return embed(m, out, out_len, err, len, [&] { return m->model->run(wrap_rgb(rgb, w, h)); });
}

const char* ei_version(void) {
    static const std::string v = edgeinfer::version();
    return v.c_str();
}
const char* ei_engine_version(void) {
    static const std::string v = edgeinfer::engine_version();
    return v.c_str();
}

}  // extern "C"
