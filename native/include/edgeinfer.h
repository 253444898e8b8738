/* libedgeinfer C API: open an edgeinfer artifact, classify or embed images, close.
 *
 * For C, Go (cgo), Rust (bindgen), C# (P/Invoke)... Link with -ledgeinfer. Every function that
 * can fail returns an EI_* status and, when `err` is not NULL, writes a one-sentence message into
 * it (truncated to err_len). A model handle may be used from several threads (calls are
 * serialised inside), and must be closed with ei_close.
 *
 *   char err[512];
 *   ei_model* m = ei_open("artifacts/mobilevit_s", "fp32", "CPU", err, sizeof err);
 *   if (!m) { fprintf(stderr, "%s\n", err); return 1; }
 *   ei_prediction top[5];
 *   int n = 0;
 *   if (ei_classify_file(m, "photo.jpg", 5, top, &n, err, sizeof err) == EI_OK)
 *       for (int i = 0; i < n; i++) printf("%.3f %s\n", top[i].probability, top[i].label);
 *   ei_close(m);
 */
#ifndef EDGEINFER_H
#define EDGEINFER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(EDGEINFER_BUILDING)
#define EI_API __attribute__((visibility("default")))
#else
#define EI_API
#endif

/* Status codes (also edgeinfer-run's exit codes where they overlap: 1 artifact/usage, 3 image). */
enum {
    EI_OK = 0,
    EI_ERR_ARTIFACT = 1, /* artifact missing/invalid/corrupt (sha256), or a bad argument */
    EI_ERR_ENGINE = 2,   /* the engine cannot load or run the model on that device */
    EI_ERR_IMAGE = 3,    /* not a decodable JPEG/PNG (missing, empty, corrupt, truncated, too large) */
    EI_ERR_KIND = 4      /* classify on an embedding model (or the reverse), or a buffer too small */
};

typedef struct ei_model ei_model;

typedef struct {
    int index;          /* class index */
    float probability;  /* softmax probability */
    const char* label;  /* owned by the model; valid until ei_close */
} ei_prediction;

/* precision: "fp32" | "fp16" | "int8" (NULL: "fp32"); device: "CPU" | "GPU" | "NPU" | "AUTO"
 * (NULL: "CPU"). Verifies the model file's sha256 and compiles it (OpenVINO model cache in
 * $EDGEINFER_CACHE or ~/.cache/edgeinfer). Returns NULL on failure. */
EI_API ei_model* ei_open(const char* artifact_dir, const char* precision, const char* device,
                         char* err, size_t err_len);
EI_API void ei_close(ei_model* model);

/* 1 when the model outputs class logits (classify), 0 when it outputs embeddings (embed). */
EI_API int ei_is_classifier(const ei_model* model);
/* Length of the output row (classes or embedding dimension). */
EI_API size_t ei_output_dim(const ei_model* model);
/* Model name from the manifest (owned by the model). */
EI_API const char* ei_model_name(const ei_model* model);

/* Top-k classes of one image; writes min(k, classes) entries to `out` (room for k) and their
 * count to `n_out`. The image is an encoded JPEG/PNG (file or buffer) or packed 8-bit RGB. */
EI_API int ei_classify_file(ei_model* model, const char* path, int k, ei_prediction* out, int* n_out,
                            char* err, size_t err_len);
EI_API int ei_classify_encoded(ei_model* model, const uint8_t* data, size_t size, int k,
                               ei_prediction* out, int* n_out, char* err, size_t err_len);
EI_API int ei_classify_rgb(ei_model* model, const uint8_t* rgb, int width, int height, int k,
                           ei_prediction* out, int* n_out, char* err, size_t err_len);

/* L2-normalised embedding of one image into `out` (room for ei_output_dim floats). */
EI_API int ei_embed_file(ei_model* model, const char* path, float* out, size_t out_len,
                         char* err, size_t err_len);
EI_API int ei_embed_encoded(ei_model* model, const uint8_t* data, size_t size, float* out,
                            size_t out_len, char* err, size_t err_len);
EI_API int ei_embed_rgb(ei_model* model, const uint8_t* rgb, int width, int height, float* out,
                        size_t out_len, char* err, size_t err_len);

/* Library and engine versions, e.g. "0.1.0" and "2026.4.1". */
EI_API const char* ei_version(void);
EI_API const char* ei_engine_version(void);

#ifdef __cplusplus
}
#endif
#endif /* EDGEINFER_H */
