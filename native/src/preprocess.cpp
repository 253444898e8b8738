// Preprocessing identical to edgeinfer.runtime.preprocess.resize_crop + normalize:
//
// - Resize: PIL's Image.resize (libImaging/Resample.c) re-implemented operation for operation:
//   separable two-pass convolution (horizontal first, only over the rows the vertical pass
//   needs), antialiasing by stretching the filter support by the downscale factor, coefficients
//   normalised in double then rounded to 22-bit fixed point, results rounded and clipped to 8
//   bits after each pass. The box is single precision as in PIL's C call. NEAREST is PIL's affine
//   nearest-neighbour transform. The result is bit-identical to PIL on the same pixels.
// - Geometry: shorter side to resize_size (int(short * long / short_side) as Python computes it),
//   center crop with Python's round-half-even, zero padding when the image is smaller than the
//   crop; beyond FULL_RESIZE_PIXELS only the kept pixels are resized (same sampling positions).
// - Normalise: x * float32(1 / (255 * std)) + float32(-mean / std), two roundings as numpy does
//   (this file is compiled with -ffp-contract=off so no FMA merges them).
#include <cmath>
#include <cstring>
#include <vector>

#include "edgeinfer/edgeinfer.hpp"

namespace edgeinfer {
namespace {

constexpr int PRECISION_BITS = 32 - 8 - 2;

double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }
double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}
double hamming_filter(double x) {
    if (x < 0.0) x = -x;
    if (x == 0.0) return 1.0;
    if (x >= 1.0) return 0.0;
    x = x * M_PI;
    return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));  // float constants, as in PIL
}
double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}
double sinc_filter(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return std::sin(x) / x;
}
double lanczos_filter(double x) {
    if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
    return 0.0;
}

struct Filter {
    double (*fn)(double);
    double support;
};

Filter filter_for(const std::string& name) {
    if (name == "bicubic") return {bicubic_filter, 2.0};
    if (name == "bilinear") return {bilinear_filter, 1.0};
    if (name == "lanczos") return {lanczos_filter, 3.0};
    if (name == "box") return {box_filter, 0.5};
    if (name == "hamming") return {hamming_filter, 1.0};
    throw OptionError("unknown interpolation '" + name + "'");
}

struct Coeffs {
    int ksize = 0;
    std::vector<int> bounds;   // (xmin, count) per output pixel
    std::vector<int32_t> kk;   // fixed-point weights, ksize per output pixel
};

// Resample.c precompute_coeffs + normalize_coeffs_8bpc
Coeffs precompute(int in_size, float in0, float in1, int out_size, const Filter& f) {
    double scale = double(in1 - in0) / out_size;  // the float subtraction first, as in C
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = f.support * filterscale;
    Coeffs c;
    c.ksize = int(std::ceil(support)) * 2 + 1;
    std::vector<double> pre(size_t(out_size) * c.ksize, 0.0);
    c.bounds.resize(size_t(out_size) * 2);
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = int(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = int(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double* k = &pre[size_t(xx) * c.ksize];
        for (int x = 0; x < xmax; x++) {
            double w = f.fn((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        c.bounds[size_t(xx) * 2] = xmin;
        c.bounds[size_t(xx) * 2 + 1] = xmax;
    }
    c.kk.resize(pre.size());
    for (size_t i = 0; i < pre.size(); i++)
        c.kk[i] = pre[i] < 0 ? int(-0.5 + pre[i] * (1 << PRECISION_BITS)) : int(0.5 + pre[i] * (1 << PRECISION_BITS));
    return c;
}

inline uint8_t clip8(int v) {
    v >>= PRECISION_BITS;
    return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

// PIL's ImagingTransform(AFFINE, NEAREST) as used by resize(NEAREST): ImagingScaleAffine
Image resize_nearest(const Image& in, int ow, int oh, const float box[4]) {
    Image out;
    out.width = ow;
    out.height = oh;
    out.rgb.assign(size_t(ow) * oh * 3, 0);
    double a0 = double(box[2] - box[0]) / ow, a4 = double(box[3] - box[1]) / oh;
    double a2 = box[0], a5 = box[1];
    auto coord = [](double v) { return v < 0.0 ? -1 : int(v); };
    std::vector<int> xin(ow, -1);
    double xo = a2 + a0 * 0.5;
    for (int x = 0; x < ow; x++) {
        int xi = coord(xo);
        if (xi >= 0 && xi < in.width) xin[x] = xi;
        xo += a0;
    }
    double yo = a5 + a4 * 0.5;
    for (int y = 0; y < oh; y++) {
        int yi = coord(yo);
        if (yi >= 0 && yi < in.height)
            for (int x = 0; x < ow; x++)
                if (xin[x] >= 0) std::memcpy(&out.rgb[(size_t(y) * ow + x) * 3], &in.rgb[(size_t(yi) * in.width + xin[x]) * 3], 3);
        yo += a4;
    }
    return out;
}

Image crop(const Image& in, long long x0, long long y0, long long cw, long long ch) {
    Image out;
    out.width = int(cw);
    out.height = int(ch);
    out.rgb.resize(size_t(cw) * ch * 3);
    for (long long y = 0; y < ch; y++)
        std::memcpy(&out.rgb[size_t(y) * cw * 3], &in.rgb[(size_t(y + y0) * in.width + x0) * 3], size_t(cw) * 3);
    return out;
}

}  // namespace

namespace {

// one horizontal pass: rows [offset, offset + rows) of `in` -> ow columns
Image pass_horizontal(const Image& in, int offset, int rows, const Coeffs& ch, int ow) {
    Image out;
    out.width = ow;
    out.height = rows;
    out.rgb.resize(size_t(ow) * rows * 3);
    for (int yy = 0; yy < rows; yy++) {
        const uint8_t* row = &in.rgb[size_t(yy + offset) * in.width * 3];
        uint8_t* orow = &out.rgb[size_t(yy) * ow * 3];
        for (int xx = 0; xx < ow; xx++) {
            const int xmin = ch.bounds[size_t(xx) * 2], xmax = ch.bounds[size_t(xx) * 2 + 1];
            const int32_t* k = &ch.kk[size_t(xx) * ch.ksize];
            int s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < xmax; x++) {
                const uint8_t* p = row + size_t(x + xmin) * 3;
                s0 += p[0] * k[x];
                s1 += p[1] * k[x];
                s2 += p[2] * k[x];
            }
            orow[xx * 3] = clip8(s0);
            orow[xx * 3 + 1] = clip8(s1);
            orow[xx * 3 + 2] = clip8(s2);
        }
    }
    return out;
}

// one vertical pass over all columns of `in` -> oh rows
Image pass_vertical(const Image& in, const Coeffs& cv, int oh) {
    Image out;
    out.width = in.width;
    out.height = oh;
    out.rgb.resize(size_t(in.width) * oh * 3);
    const size_t stride = size_t(in.width) * 3;
    for (int yy = 0; yy < oh; yy++) {
        const int ymin = cv.bounds[size_t(yy) * 2], ymax = cv.bounds[size_t(yy) * 2 + 1];
        const int32_t* k = &cv.kk[size_t(yy) * cv.ksize];
        uint8_t* orow = &out.rgb[size_t(yy) * stride];
        for (size_t xx = 0; xx < stride; xx++) {
            int s = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < ymax; y++) s += in.rgb[size_t(y + ymin) * stride + xx] * k[y];
            orow[xx] = clip8(s);
        }
    }
    return out;
}

}  // namespace

Image resize_pil(const Image& in, int ow, int oh, const std::string& filter, float bx0, float by0, float bx1, float by1) {
    if (ow < 1 || oh < 1) throw OptionError("resize to an empty size");
    float box[4] = {bx0, by0, bx1, by1};
    // _imaging.c: an integer box of the output's size is a crop
    if (box[0] - int(box[0]) == 0 && box[2] - box[0] == ow && box[1] - int(box[1]) == 0 && box[3] - box[1] == oh)
        return crop(in, int(box[0]), int(box[1]), ow, oh);
    if (filter == "nearest") return resize_nearest(in, ow, oh, box);
    Filter f = filter_for(filter);
    const bool need_h = ow != in.width || box[0] != 0 || box[2] != float(ow);
    const bool need_v = oh != in.height || box[1] != 0 || box[3] != float(oh);
    Coeffs cv = precompute(in.height, box[1], box[3], oh, f);
    if (!need_h && !need_v) return in;
    Coeffs ch = precompute(in.width, box[0], box[2], ow, f);
    if (!need_h) return pass_vertical(in, cv, oh);
    // Pillow 13 (python-pillow#9549): when the height shrinks by more than twice the pixels the
    // width does, the vertical pass runs first (the pass order changes the 8-bit rounding)
    const bool vertical_first = oh < in.height && (in.height - oh) > 2 * (in.width - ow);
    if (vertical_first) {
        if (!need_v) return pass_horizontal(in, 0, in.height, ch, ow);
        Image tmp = pass_vertical(in, cv, oh);
        return pass_horizontal(tmp, 0, oh, ch, ow);
    }
    // horizontal first, only over the rows the vertical pass reads
    const int yfirst = cv.bounds[0];
    const int ylast = cv.bounds[size_t(oh) * 2 - 2] + cv.bounds[size_t(oh) * 2 - 1];
    Image tmp = pass_horizontal(in, need_v ? yfirst : 0, need_v ? ylast - yfirst : in.height, ch, ow);
    if (!need_v) return tmp;
    for (int i = 0; i < oh; i++) cv.bounds[size_t(i) * 2] -= yfirst;
    return pass_vertical(tmp, cv, oh);
}

namespace {
// preprocess._crop_span: (first kept pixel, kept count, zero padding before) of a center crop of
// t along n pixels; torchvision pads with zeros when the crop is larger than the image
struct Span { long long first, count, pad; };
Span crop_span(long long n, long long t) {
    if (n >= t) return {(long long)std::nearbyint(double(n - t) / 2.0), t, 0};  // round half to even
    return {0, n, (t - n) / 2};
}
constexpr long long kFullResizePixels = 1LL << 22;  // preprocess.FULL_RESIZE_PIXELS
}  // namespace

std::vector<float> preprocess(const Image& image, const Preprocess& spec) {
    const long long th = spec.height, tw = spec.width, shortside = spec.resize_size;
    if (image.width < 1 || image.height < 1) throw ImageError("image has no pixels");
    // geometry from the full-resolution size (a reduced / draft-decoded image is smaller)
    const bool extent = image.draft_scale > 1;
    const long long w = extent ? image.full_width : image.width;
    const long long h = extent ? image.full_height : image.height;
    const double bw = extent ? double(w) / image.draft_scale : image.width;   // that extent in
    const double bh = extent ? double(h) / image.draft_scale : image.height;  // the image's pixels
    Image cropped;
    Span sx, sy;
    if ((w <= h && w != shortside) || (h < w && h != shortside) || extent) {
        long long nw, nh;
        // Python: int(short * h / w): exact integer product, then a double division, truncated
        if (w <= h) { nw = shortside; nh = std::max(1LL, (long long)(double(shortside * h) / double(w))); }
        else { nw = std::max(1LL, (long long)(double(shortside * w) / double(h))); nh = shortside; }
        sx = crop_span(nw, tw);
        sy = crop_span(nh, th);
        if (nw * nh <= kFullResizePixels) {
            // resize everything, then crop (bit-exact with torchvision)
            Image r = resize_pil(image, int(nw), int(nh), spec.interpolation, 0.f, 0.f, float(bw), float(bh));
            cropped = crop(r, sx.first, sy.first, sx.count, sy.count);
        } else {
            // extreme aspect ratio: only the kept pixels, at the same sampling positions
            const double fx = bw / nw, fy = bh / nh;
            cropped = resize_pil(image, int(sx.count), int(sy.count), spec.interpolation,
                                 float(sx.first * fx), float(sy.first * fy),
                                 float((sx.first + sx.count) * fx), float((sy.first + sy.count) * fy));
        }
    } else {
        sx = crop_span(w, tw);
        sy = crop_span(h, th);
        cropped = crop(image, sx.first, sy.first, sx.count, sy.count);
    }
    float scale[3], bias[3];
    for (int c = 0; c < 3; c++) {
        scale[c] = 1.0f / (255.0f * spec.std[c]);
        bias[c] = -spec.mean[c] / spec.std[c];
    }
    std::vector<float> out(size_t(3) * th * tw);
    const size_t plane = size_t(th) * tw;
    for (long long y = 0; y < th; y++) {
        const long long cy = y - sy.pad;
        for (long long x = 0; x < tw; x++) {
            const long long cx = x - sx.pad;
            const bool inside = cy >= 0 && cy < sy.count && cx >= 0 && cx < sx.count;
            const uint8_t* p = inside ? &cropped.rgb[(size_t(cy) * cropped.width + cx) * 3] : nullptr;
            for (int c = 0; c < 3; c++) {
                const int oc = spec.bgr ? 2 - c : c;  // mean/std are listed in the model's channel order
                float v = float(p ? p[c] : 0) * scale[oc];
                v += bias[oc];
                out[size_t(oc) * plane + size_t(y) * tw + x] = v;
            }
        }
    }
    return out;
}

}  // namespace edgeinfer
