// libedgeinfer: run an edgeinfer artifact (manifest.json + ONNX files) from C++ without Python.
//
// The preprocessing reproduces edgeinfer/runtime/preprocess.py (PIL decoding, draft JPEG
// decoding, EXIF orientation, PIL's antialiased resampling, center crop, mean/std), so the same
// artifact gives the same inputs and, on the same engine and precision, the same outputs.
// The engine is OpenVINO's C++ API; it is hidden behind Model so this header needs nothing else.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(EDGEINFER_BUILDING)
#define EDGEINFER_API __attribute__((visibility("default")))
#else
#define EDGEINFER_API
#endif

namespace edgeinfer {

// ----------------------------------------------------------------------------- errors
// Every message says what was asked for, what was found and what to do (as in errors.py).
class EDGEINFER_API Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};
// The artifact directory is missing, incomplete, corrupt (sha256), or its manifest is invalid.
class EDGEINFER_API ArtifactError : public Error { public: using Error::Error; };
// An input that is not a decodable image (missing, empty, corrupt, truncated, unsupported, too large).
class EDGEINFER_API ImageError : public Error { public: using Error::Error; };
// A bad option value (precision, device, top-k...).
class EDGEINFER_API OptionError : public Error { public: using Error::Error; };
// The engine could not load or run the model on the requested device.
class EDGEINFER_API EngineError : public Error { public: using Error::Error; };

// ----------------------------------------------------------------------------- images
// 8-bit RGB, interleaved, rows packed (stride = 3 * width).
struct Image {
    int width = 0;
    int height = 0;
    std::vector<uint8_t> rgb;
    // Set when a large JPEG was decoded at 1/scale in the DCT domain: the full-resolution
    // (oriented) size, so the resize maps exactly the region a full decode would (see preprocess.py).
    int full_width = 0;
    int full_height = 0;
    int draft_scale = 1;
};

struct DecodeOptions {
    // JPEGs whose shorter side is >= 2 * draft_size are decoded at 1/2, 1/4 or 1/8 scale with
    // both sides >= draft_size; 0 disables (as PIL's Image.draft in load_image).
    int draft_size = 0;
    // Decompression-bomb guard: PIL's Image.MAX_IMAGE_PIXELS; 0 disables.
    long long max_pixels = 89478485LL;
};

// Decode JPEG or PNG bytes to RGB: EXIF orientation applied, alpha composited on white,
// grayscale/palette/16-bit/CMYK converted as PIL does. Throws ImageError.
EDGEINFER_API Image decode_image(const uint8_t* data, size_t size, const DecodeOptions& options = {});
// Read and decode a file (clear errors for missing / directory / empty files).
EDGEINFER_API Image read_image(const std::string& path, const DecodeOptions& options = {});
EDGEINFER_API std::vector<uint8_t> read_file(const std::string& path);

// ----------------------------------------------------------------------------- manifest
struct Preprocess {
    int channels = 3, height = 0, width = 0;  // input_size [C, H, W]
    int resize_size = 0;                      // shorter side before the center crop
    std::string interpolation = "bilinear";   // bilinear | bicubic | nearest | lanczos | box | hamming
    float mean[3] = {0, 0, 0};
    float std[3] = {1, 1, 1};
    bool bgr = false;                         // channel_order "BGR"
};

struct FileEntry {
    std::string precision, file, sha256, input_name;
};

struct Manifest {
    std::string dir;
    std::string name, kind, weights_origin;
    std::string output_kind;   // logits | embedding
    int output_dim = 0;
    Preprocess preprocess;
    std::vector<std::string> labels;  // empty when the artifact has none
    std::vector<FileEntry> files;     // image tower, fp32 / fp16 / int8
    const FileEntry* file(const std::string& precision) const {
        for (const auto& f : files)
            if (f.precision == precision) return &f;
        return nullptr;
    }
};

// Parse and validate <dir>/manifest.json (format, version, preprocess, output, files). Throws ArtifactError.
EDGEINFER_API Manifest read_manifest(const std::string& artifact_dir);
EDGEINFER_API std::string sha256_file(const std::string& path);

// ----------------------------------------------------------------------------- preprocessing
// Image -> CHW float32 of size C*H*W: resize shorter side (PIL resampling), center crop, mean/std.
EDGEINFER_API std::vector<float> preprocess(const Image& image, const Preprocess& spec);
// Resize as PIL's Image.resize(size, filter, box) does on an RGB image (exposed for tests).
EDGEINFER_API Image resize_pil(const Image& image, int out_w, int out_h, const std::string& filter,
                               float box_x0, float box_y0, float box_x1, float box_y1);

// ----------------------------------------------------------------------------- model
struct Options {
    std::string precision = "fp32";  // fp32 | fp16 | int8
    std::string device = "CPU";      // OpenVINO device: CPU | GPU | GPU.0 | NPU | AUTO
    int threads = 0;                 // CPU inference threads; 0: OpenVINO's default
    std::string cache_dir;           // engine cache root; "": $EDGEINFER_CACHE or ~/.cache/edgeinfer
    bool use_cache = true;           // OpenVINO model cache (a second start skips compilation)
    bool verify = true;              // check the model file's sha256 against the manifest
    bool draft = true;               // JPEG DCT-domain downscaling of large photos
};

struct Prediction {
    int index = 0;
    std::string label;
    double probability = 0;
};

struct Timing {
    double decode_ms = 0, preprocess_ms = 0, infer_ms = 0;
};

class EDGEINFER_API Model {
public:
    // Opens the artifact: validates the manifest, checks the file's sha256, compiles the model.
    static std::unique_ptr<Model> open(const std::string& artifact_dir, const Options& options = {});
    ~Model();
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    const Manifest& manifest() const;
    const Options& options() const;
    const std::string& device() const;
    // DecodeOptions that match this model's preprocessing (draft size = 2 x resize size).
    DecodeOptions decode_options() const;

    // Raw output row (logits or unnormalised embedding) for one image / encoded file / CHW tensor.
    std::vector<float> run(const Image& image, Timing* timing = nullptr);
    std::vector<float> run_encoded(const uint8_t* data, size_t size, Timing* timing = nullptr);
    std::vector<float> run_file(const std::string& path, Timing* timing = nullptr);
    std::vector<float> infer(const std::vector<float>& chw);

    // Softmax over logits, best first (classifiers). Throws OptionError for an embedding model.
    std::vector<Prediction> top_k(const std::vector<float>& logits, int k) const;
    // L2-normalised embedding.
    static std::vector<float> l2_normalize(const std::vector<float>& v);

private:
    Model();
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

EDGEINFER_API std::string version();
EDGEINFER_API std::string engine_version();

}  // namespace edgeinfer
