// Image decoding that reproduces edgeinfer.runtime.preprocess.load_image (PIL) on JPEG and PNG:
//
// - JPEG with libjpeg(-turbo): PIL decodes with the same library, default settings (ISLOW IDCT,
//   fancy upsampling), so a full decode is bit-identical. Draft decoding (Image.draft) is libjpeg's
//   DCT scaling (scale_num/scale_denom = 1/s), chosen exactly as PIL chooses s; PIL drafts RGB and
//   L JPEGs only. A 4-component JPEG is CMYK with Adobe's inverted convention ("CMYK;I").
//   A truncated JPEG is an error (PIL raises "image file is truncated").
// - PNG with libpng: palette / grayscale / 16-bit / alpha converted as PIL's modes are (16-bit
//   RGB(A) keeps the high byte, 16-bit gray is scaled like preprocess.to_rgb, tRNS only counts
//   for palette images, alpha is composited on white with PIL's integer arithmetic).
// - EXIF orientation (ImageOps.exif_transpose) from the JPEG APP1 Exif segment or the PNG eXIf
//   chunk / "Raw profile type exif" text, with PIL's XMP tiff:Orientation fallback.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>
#include <sys/stat.h>
#include <vector>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "edgeinfer/edgeinfer.hpp"

namespace edgeinfer {
namespace {

// ------------------------------------------------------------------ EXIF orientation
// The orientation tag of an EXIF/TIFF block; -1 when absent (PIL then looks at XMP).
int tiff_orientation(const uint8_t* p, size_t n) {
    if (n >= 6 && std::memcmp(p, "Exif\0\0", 6) == 0) { p += 6; n -= 6; }
    if (n < 8) return -1;
    bool le;
    if (p[0] == 'I' && p[1] == 'I') le = true;
    else if (p[0] == 'M' && p[1] == 'M') le = false;
    else return -1;
    auto u16 = [&](size_t o) -> uint32_t { return le ? (p[o] | p[o + 1] << 8) : (p[o] << 8 | p[o + 1]); };
    auto u32 = [&](size_t o) -> uint32_t {
        return le ? (uint32_t(p[o]) | uint32_t(p[o + 1]) << 8 | uint32_t(p[o + 2]) << 16 | uint32_t(p[o + 3]) << 24)
                  : (uint32_t(p[o]) << 24 | uint32_t(p[o + 1]) << 16 | uint32_t(p[o + 2]) << 8 | uint32_t(p[o + 3]));
    };
    size_t ifd = u32(4);
    if (ifd + 2 > n) return -1;
    uint32_t count = u16(ifd);
    for (uint32_t i = 0; i < count; i++) {
        size_t e = ifd + 2 + 12 * size_t(i);
        if (e + 12 > n) break;
        if (u16(e) != 0x0112) continue;
        uint32_t type = u16(e + 2);
        return type == 3 ? int(u16(e + 8)) : type == 4 ? int(u32(e + 8) & 0xffff) : 0;
    }
    return -1;
}

// PIL's fallback: re.search(r'tiff:Orientation(="|>)([0-9])', xmp)
int xmp_orientation(const std::string& xmp) {
    const std::string key = "tiff:Orientation";
    for (size_t pos = xmp.find(key); pos != std::string::npos; pos = xmp.find(key, pos + 1)) {
        size_t q = pos + key.size();
        if (q + 1 < xmp.size() && xmp[q] == '>' && std::isdigit((unsigned char)xmp[q + 1]))
            return xmp[q + 1] - '0';
        if (q + 2 < xmp.size() && xmp[q] == '=' && xmp[q + 1] == '"' && std::isdigit((unsigned char)xmp[q + 2]))
            return xmp[q + 2] - '0';
    }
    return -1;
}

// PIL Image.transpose methods for orientations 2..8 (ImageOps.exif_transpose's table)
void orient(Image& im, int o) {
    if (o < 2 || o > 8) return;
    const int W = im.width, H = im.height;
    const bool swap = o >= 5;
    const int ow = swap ? H : W, oh = swap ? W : H;
    std::vector<uint8_t> out(size_t(ow) * oh * 3);
    for (int y = 0; y < oh; y++) {
        for (int x = 0; x < ow; x++) {
            int sx, sy;
            switch (o) {
                case 2: sx = W - 1 - x; sy = y; break;          // FLIP_LEFT_RIGHT
                case 3: sx = W - 1 - x; sy = H - 1 - y; break;  // ROTATE_180
                case 4: sx = x; sy = H - 1 - y; break;          // FLIP_TOP_BOTTOM
                case 5: sx = y; sy = x; break;                  // TRANSPOSE
                case 6: sx = y; sy = H - 1 - x; break;          // ROTATE_270
                case 7: sx = W - 1 - y; sy = H - 1 - x; break;  // TRANSVERSE
                default: sx = W - 1 - y; sy = x; break;         // 8: ROTATE_90
            }
            std::memcpy(&out[(size_t(y) * ow + x) * 3], &im.rgb[(size_t(sy) * W + sx) * 3], 3);
        }
    }
    im.rgb.swap(out);
    im.width = ow;
    im.height = oh;
}

// PIL AlphaComposite.c onto an opaque white background, then RGBA -> RGB
inline void composite_white(uint8_t* rgb, const uint8_t r, const uint8_t g, const uint8_t b, const uint8_t a) {
    if (a == 0) { rgb[0] = rgb[1] = rgb[2] = 255; return; }
    constexpr uint32_t PB = 7;
    auto div255 = [](uint32_t v) { return ((v >> 8) + v) >> 8; };
    const uint32_t blend = 255u * (255u - a);
    const uint32_t outa255 = a * 255u + blend;
    const uint32_t coef1 = a * 255u * 255u * (1u << PB) / outa255;
    const uint32_t coef2 = 255u * (1u << PB) - coef1;
    const uint8_t src[3] = {r, g, b};
    for (int c = 0; c < 3; c++) {
        uint32_t t = src[c] * coef1 + 255u * coef2;
        rgb[c] = uint8_t(div255(t + (0x80u << PB)) >> PB);
    }
}


// ------------------------------------------------------------------ PIL modes and guards
// A decoded image in its PIL mode, before the conversion to RGB (load_image reduces large
// non-JPEG images in that mode, then converts).
enum class Mode { L, LA, RGB, RGBA, CMYK, I };

struct Raw {
    int w = 0, h = 0;
    Mode mode = Mode::RGB;
    std::string pil_mode;       // PIL's mode at open: "1", "L", "P", "I;16", "LA", "RGB", "RGBA", "CMYK"
    bool transparency = false;  // PIL's info["transparency"] (a tRNS chunk)
    std::vector<uint8_t> px;    // interleaved samples, channels(mode) per pixel
    std::vector<int32_t> ipx;   // Mode::I values (16-bit grayscale)
};

int channels(Mode m) {
    switch (m) {
        case Mode::L: return 1;
        case Mode::LA: return 2;
        case Mode::RGB: return 3;
        default: return 4;
    }
}

// preprocess.py constants (MAX_ASPECT, MAX_DECODE_BYTES)
constexpr long long kMaxAspect = 100;
constexpr long long kMaxDecodeBytes = 160LL << 20;

void check_shape(long long w, long long h) {
    if (w <= 0 || h <= 0)
        throw ImageError("refused: the image is " + std::to_string(w) + "x" + std::to_string(h) +
                         " pixels (zero width or height)");
    if (std::max(w, h) > kMaxAspect * std::min(w, h))
        throw ImageError("refused: " + std::to_string(w) + "x" + std::to_string(h) + " has an aspect ratio above " +
                         std::to_string(kMaxAspect) + ":1; not a photo (and resizing it would take gigabytes)");
}

void check_bomb(long long w, long long h, const DecodeOptions& opt) {
    if (opt.max_pixels > 0 && w * h > opt.max_pixels)
        throw ImageError("refused: " + std::to_string(w) + "x" + std::to_string(h) + " = " +
                         std::to_string(w * h) + " pixels exceeds the decompression-bomb limit of " +
                         std::to_string(opt.max_pixels) + " pixels (--max-pixels; PIL's MAX_IMAGE_PIXELS)");
}

bool reducible(const std::string& m) { return m != "1" && m != "P" && m.rfind("I;16", 0) != 0; }

// preprocess._check_budget: refuse what would take more than MAX_DECODE_BYTES to decode and
// convert; returns the Image.reduce factor (1: none). reduce_to 0: no reduction considered.
int check_budget(long long w, long long h, const std::string& mode, bool transparency, int reduce_to) {
    const long long px = w * h;
    int factor = 1;
    if (reduce_to > 0 && std::min(w, h) >= 2LL * reduce_to) factor = int(std::max(1LL, std::min(w, h) / reduce_to));
    const long long bpp = (mode == "1" || mode == "L" || mode == "P") ? 1 : mode.rfind("I;16", 0) == 0 ? 2 : 4;
    long long cost = px * bpp;
    if (factor > 1) {
        if (!reducible(mode)) cost += px * 4;
    } else {
        long long conv = mode == "RGB" ? 0
                       : (mode == "RGBA" || mode == "LA" || (mode == "P" && transparency)) ? 16
                       : mode.rfind("I;16", 0) == 0 ? 10 : 4;
        cost += px * conv;
    }
    if (cost > kMaxDecodeBytes) {
        char mb[32], lim[32];
        std::snprintf(mb, sizeof mb, "%.0f", double(cost) / (1 << 20));
        std::snprintf(lim, sizeof lim, "%.0f", double(kMaxDecodeBytes) / (1 << 20));
        throw ImageError("refused: decoding this " + std::to_string(w) + "x" + std::to_string(h) + " " + mode +
                         " image needs about " + mb + " MB, above the per-image limit of " + lim +
                         " MB (decompression bomb guard)");
    }
    return factor;
}

// ------------------------------------------------------------------ Image.reduce (libImaging/Reduce.c)
inline uint32_t reduce_multiplier(uint32_t count) {
    // division_UINT32(count, 8): computed in single precision, as in Pillow
    return uint32_t(4294967296.0f / float(256u * count));
}

// 8-bit modes; LA and RGBA are reduced premultiplied (Image.reduce converts to La / RGBa and back)
void reduce_u8(Raw& r, int f) {
    const int C = channels(r.mode), W = r.w, H = r.h;
    const bool alpha = r.mode == Mode::LA || r.mode == Mode::RGBA;
    auto muldiv255 = [](uint32_t a, uint32_t b) { uint32_t t = a * b + 128; return ((t >> 8) + t) >> 8; };
    if (alpha) {
        for (size_t i = 0; i < size_t(W) * H; i++) {
            uint8_t* p = &r.px[i * C];
            for (int c = 0; c < C - 1; c++) p[c] = uint8_t(muldiv255(p[c], p[C - 1]));
        }
    }
    const int ow = (W + f - 1) / f, oh = (H + f - 1) / f;
    std::vector<uint8_t> out(size_t(ow) * oh * C);
    for (int y = 0; y < oh; y++) {
        const int y0 = y * f, y1 = std::min(y0 + f, H);
        for (int x = 0; x < ow; x++) {
            const int x0 = x * f, x1 = std::min(x0 + f, W);
            const uint32_t count = uint32_t((y1 - y0) * (x1 - x0));
            const uint32_t mul = reduce_multiplier(count), amend = count / 2;
            for (int c = 0; c < C; c++) {
                uint32_t ss = amend;
                for (int yy = y0; yy < y1; yy++)
                    for (int xx = x0; xx < x1; xx++) ss += r.px[(size_t(yy) * W + xx) * C + c];
                out[(size_t(y) * ow + x) * C + c] = uint8_t((ss * mul) >> 24);
            }
        }
    }
    if (alpha) {
        for (size_t i = 0; i < size_t(ow) * oh; i++) {
            uint8_t* p = &out[i * C];
            const uint32_t a = p[C - 1];
            if (a != 255 && a != 0)
                for (int c = 0; c < C - 1; c++) p[c] = uint8_t(std::min<uint32_t>(255u, 255u * p[c] / a));
        }
    }
    r.px.swap(out);
    r.w = ow;
    r.h = oh;
}

// mode "I" (32-bit): double sums, ROUND_UP(ss / count)
void reduce_i32(Raw& r, int f) {
    const int W = r.w, H = r.h, ow = (W + f - 1) / f, oh = (H + f - 1) / f;
    std::vector<int32_t> out(size_t(ow) * oh);
    for (int y = 0; y < oh; y++) {
        const int y0 = y * f, y1 = std::min(y0 + f, H);
        for (int x = 0; x < ow; x++) {
            const int x0 = x * f, x1 = std::min(x0 + f, W);
            double ss = 0;
            for (int yy = y0; yy < y1; yy++)
                for (int xx = x0; xx < x1; xx++) ss += r.ipx[size_t(yy) * W + xx];
            const double v = ss * (1.0 / ((y1 - y0) * (x1 - x0)));
            out[size_t(y) * ow + x] = int(v >= 0.0 ? v + 0.5f : v - 0.5f);
        }
    }
    r.ipx.swap(out);
    r.w = ow;
    r.h = oh;
}

// ------------------------------------------------------------------ to_rgb (preprocess.to_rgb)
Image to_rgb(const Raw& r) {
    Image im;
    im.width = r.w;
    im.height = r.h;
    const size_t n = size_t(r.w) * r.h;
    im.rgb.resize(n * 3);
    switch (r.mode) {
        case Mode::RGB:
            im.rgb = r.px;
            break;
        case Mode::L:
            for (size_t i = 0; i < n; i++) im.rgb[3 * i] = im.rgb[3 * i + 1] = im.rgb[3 * i + 2] = r.px[i];
            break;
        case Mode::LA:
            for (size_t i = 0; i < n; i++) {
                const uint8_t l = r.px[2 * i];
                composite_white(&im.rgb[3 * i], l, l, l, r.px[2 * i + 1]);
            }
            break;
        case Mode::RGBA:
            for (size_t i = 0; i < n; i++)
                composite_white(&im.rgb[3 * i], r.px[4 * i], r.px[4 * i + 1], r.px[4 * i + 2], r.px[4 * i + 3]);
            break;
        case Mode::CMYK:
            // PIL's cmyk2rgb: nk = 255 - k; out = nk - c * nk / 255 (MULDIV255)
            for (size_t i = 0; i < n; i++) {
                const int nk = 255 - r.px[4 * i + 3];
                for (int c = 0; c < 3; c++) {
                    int tmp = r.px[4 * i + c] * nk + 128;
                    int mul = ((tmp >> 8) + tmp) >> 8;
                    im.rgb[3 * i + c] = uint8_t(std::clamp(nk - mul, 0, 255));
                }
            }
            break;
        case Mode::I: {
            // float32 array / (65535 if max > 255 else 255) * 255, clipped, rounded half to even
            int32_t mx = 0;
            for (size_t i = 0; i < n; i++) mx = std::max(mx, r.ipx[i]);
            const float hi = mx > 255 ? 65535.0f : 255.0f;
            for (size_t i = 0; i < n; i++) {
                float v = float(r.ipx[i]) / hi * 255.0f;
                v = std::nearbyint(std::min(std::max(v, 0.0f), 255.0f));
                im.rgb[3 * i] = im.rgb[3 * i + 1] = im.rgb[3 * i + 2] = uint8_t(v);
            }
            break;
        }
    }
    return im;
}

// reduce (when asked), convert to RGB, orient, and record the full-resolution extent
Image finish(Raw& r, int factor, int draft_scale, int full_w, int full_h, int orientation) {
    int scale = draft_scale;
    if (factor > 1) {
        if (r.mode == Mode::I) reduce_i32(r, factor);
        else reduce_u8(r, factor);
        scale = factor;
    }
    Image im = to_rgb(r);
    r.px.clear();
    r.ipx.clear();
    const bool swap = orientation >= 5 && orientation <= 8;
    orient(im, orientation);
    if (scale > 1) {
        im.full_width = swap ? full_h : full_w;
        im.full_height = swap ? full_w : full_h;
        im.draft_scale = scale;
    }
    return im;
}

// ------------------------------------------------------------------ JPEG
struct JpegErr {
    jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
    bool truncated;
};

void jpeg_fail(j_common_ptr c) {
    auto* e = reinterpret_cast<JpegErr*>(c->err);
    (*c->err->format_message)(c, e->message);
    longjmp(e->jump, 1);
}

void jpeg_note(j_common_ptr c, int level) {
    auto* e = reinterpret_cast<JpegErr*>(c->err);
    // the memory source inserts a fake EOI and warns when the data runs out: a truncated file
    if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) e->truncated = true;
}

Image decode_jpeg(const uint8_t* data, size_t size, const DecodeOptions& opt) {
    jpeg_decompress_struct cinfo;
    JpegErr err;
    std::memset(&err, 0, sizeof err);
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_fail;
    err.pub.emit_message = jpeg_note;
    Raw r;  // declared before setjmp: longjmp skips no destructor
    std::string fail;
    int orientation = -1, full_w = 0, full_h = 0, factor = 1, draft = 1;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        throw ImageError(std::string("cannot decode JPEG: ") + err.message);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, const_cast<unsigned char*>(data), static_cast<unsigned long>(size));
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&cinfo, TRUE);
    full_w = int(cinfo.image_width);
    full_h = int(cinfo.image_height);
    const int comps = cinfo.num_components;
    // PIL: 1 component is "L", 3 "RGB", 4 "CMYK" (Adobe's inverted convention, "CMYK;I")
    r.pil_mode = comps == 1 ? "L" : comps == 4 ? "CMYK" : "RGB";
    r.mode = comps == 1 ? Mode::L : comps == 4 ? Mode::CMYK : Mode::RGB;
    if (err.truncated) fail = "image file is truncated (no image data)";
    try {
        if (fail.empty()) {
            check_shape(full_w, full_h);
            check_bomb(full_w, full_h, opt);
        }
    } catch (const ImageError& e) {
        fail = e.what();
    }
    if (fail.empty()) {
        std::string xmp;
        bool have_exif = false;
        for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
            if (m->marker != JPEG_APP0 + 1) continue;
            if (!have_exif && m->data_length >= 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
                orientation = tiff_orientation(m->data, m->data_length);
                have_exif = true;
            } else if (m->data_length > 29 && std::memcmp(m->data, "http://ns.adobe.com/xap/1.0/\0", 29) == 0) {
                xmp.assign(reinterpret_cast<const char*>(m->data) + 29, m->data_length - 29);
            }
        }
        if (orientation < 0) orientation = xmp_orientation(xmp);  // getexif's XMP fallback
        cinfo.out_color_space = comps == 1 ? JCS_GRAYSCALE : comps == 4 ? JCS_CMYK : JCS_RGB;
        if (opt.draft_size > 0 && comps != 4 && std::min(full_w, full_h) >= 2 * opt.draft_size) {
            // Image.draft(mode, (d, d)): s = min(w // d, h // d), then the largest of 8, 4, 2, 1 <= s
            int s = std::min(full_w / opt.draft_size, full_h / opt.draft_size);
            draft = s >= 8 ? 8 : s >= 4 ? 4 : s >= 2 ? 2 : 1;
            cinfo.scale_num = 1;
            cinfo.scale_denom = draft;
        }
        jpeg_calc_output_dimensions(&cinfo);
        r.w = int(cinfo.output_width);
        r.h = int(cinfo.output_height);
        try {
            factor = check_budget(r.w, r.h, r.pil_mode, false, draft > 1 ? 0 : opt.draft_size);
        } catch (const ImageError& e) {
            fail = e.what();
        }
    }
    if (fail.empty()) {
        jpeg_start_decompress(&cinfo);
        const int oc = cinfo.output_components;
        r.px.resize(size_t(r.w) * r.h * oc);
        while (cinfo.output_scanline < cinfo.output_height) {
            JSAMPROW row = r.px.data() + size_t(cinfo.output_scanline) * r.w * oc;
            jpeg_read_scanlines(&cinfo, &row, 1);
        }
        if (err.truncated) fail = "image file is truncated";
    }
    // no jpeg_finish_decompress: PIL does not read past the last scanline either
    jpeg_destroy_decompress(&cinfo);
    if (!fail.empty()) throw ImageError(fail);
    if (r.mode == Mode::CMYK)
        for (auto& v : r.px) v = uint8_t(255 - v);  // "CMYK;I"
    // preprocess.load_image: scale = max(1, round(full_w / draft_w))
    int draft_scale = draft > 1 ? std::max(1, int(std::nearbyint(double(full_w) / r.w))) : 1;
    return finish(r, factor, draft_scale, full_w, full_h, orientation);
}

// ------------------------------------------------------------------ PNG
struct PngSrc {
    const uint8_t* data;
    size_t size, pos;
    char message[256];
};

void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
    auto* s = static_cast<PngSrc*>(png_get_io_ptr(png));
    if (s->pos + n > s->size) png_error(png, "image file is truncated");
    std::memcpy(out, s->data + s->pos, n);
    s->pos += n;
}
void png_fail(png_structp png, png_const_charp msg) {
    auto* s = static_cast<PngSrc*>(png_get_error_ptr(png));
    std::snprintf(s->message, sizeof s->message, "%s", msg);
    png_longjmp(png, 1);
}
void png_quiet(png_structp, png_const_charp) {}

std::vector<uint8_t> hex_bytes(const std::string& text) {
    // PIL: bytes.fromhex("".join(text.split("\n")[3:]))
    size_t pos = 0;
    for (int i = 0; i < 3 && pos != std::string::npos; i++) {
        pos = text.find('\n', pos);
        if (pos != std::string::npos) pos++;
    }
    std::vector<uint8_t> out;
    if (pos == std::string::npos) return out;
    int hi = -1;
    for (size_t i = pos; i < text.size(); i++) {
        char c = text[i];
        int v = std::isdigit((unsigned char)c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (v < 0) continue;
        if (hi < 0) hi = v; else { out.push_back(uint8_t(hi << 4 | v)); hi = -1; }
    }
    return out;
}

Image decode_png(const uint8_t* data, size_t size, const DecodeOptions& opt) {
    PngSrc src{data, size, 0, {0}};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_fail, png_quiet);
    if (!png) throw ImageError("cannot decode PNG: out of memory");
    png_infop info = png_create_info_struct(png);
    Raw r;
    std::vector<uint8_t> raw;
    std::vector<png_bytep> rows;
    std::string fail;
    int orientation = -1, color = 0, depth = 0, factor = 1;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, nullptr);
        throw ImageError(std::string("cannot decode PNG: ") + src.message);
    }
    png_set_read_fn(png, &src, png_read_mem);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_read_info(png, info);
    r.w = int(png_get_image_width(png, info));
    r.h = int(png_get_image_height(png, info));
    color = png_get_color_type(png, info);
    depth = png_get_bit_depth(png, info);
    r.transparency = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
    // PIL's mode for this PNG
    switch (color) {
        case PNG_COLOR_TYPE_GRAY: r.pil_mode = depth == 1 ? "1" : depth == 16 ? "I;16" : "L"; break;
        case PNG_COLOR_TYPE_GRAY_ALPHA: r.pil_mode = "LA"; break;
        case PNG_COLOR_TYPE_PALETTE: r.pil_mode = "P"; break;
        case PNG_COLOR_TYPE_RGB: r.pil_mode = "RGB"; break;
        default: r.pil_mode = "RGBA"; break;
    }
    try {
        check_shape(r.w, r.h);
        check_bomb(r.w, r.h, opt);
        factor = check_budget(r.w, r.h, r.pil_mode, r.transparency, opt.draft_size);
    } catch (const ImageError& e) {
        fail = e.what();
    }
    if (fail.empty()) {
        png_bytep exif = nullptr;
        png_uint_32 exif_len = 0;
        bool have_exif = false;
#ifdef PNG_eXIf_SUPPORTED
        if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif && exif_len) {
            orientation = tiff_orientation(exif, exif_len);
            have_exif = true;
        }
#endif
        png_textp text = nullptr;
        int ntext = 0;
        png_get_text(png, info, &text, &ntext);
        std::string xmp;
        for (int i = 0; i < ntext; i++) {
            std::string key = text[i].key ? text[i].key : "";
            std::string val = text[i].text ? std::string(text[i].text, text[i].text_length ? text[i].text_length : text[i].itxt_length) : "";
            if (!have_exif && key == "Raw profile type exif") {
                auto b = hex_bytes(val);
                orientation = tiff_orientation(b.data(), b.size());
                have_exif = true;
            } else if (key == "XML:com.adobe.xmp") {
                xmp = val;
            }
        }
        if (orientation < 0) orientation = xmp_orientation(xmp);  // getexif's XMP fallback
        if (color == PNG_COLOR_TYPE_PALETTE) {
            png_set_palette_to_rgb(png);
            if (r.transparency) png_set_tRNS_to_alpha(png);  // PIL: P with "transparency" -> RGBA
        }
        // 1/2/4-bit gray scaled to 0..255, as PIL's "1" -> "L" and L;2 / L;4 unpacking do
        if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
        // PIL keeps the high byte of 16-bit RGB / RGBA / LA samples; gray 16 is kept whole ("I;16")
        if (depth == 16 && color != PNG_COLOR_TYPE_GRAY) png_set_strip_16(png);
        png_set_interlace_handling(png);
        png_read_update_info(png, info);
        size_t rowbytes = png_get_rowbytes(png, info);
        raw.resize(rowbytes * r.h);
        rows.resize(r.h);
        for (int y = 0; y < r.h; y++) rows[y] = raw.data() + rowbytes * y;
        png_read_image(png, rows.data());
        // tRNS on gray/RGB images is ignored (PIL keeps them L / RGB); only palette alpha counts
        const int ch = png_get_channels(png, info);
        if (color == PNG_COLOR_TYPE_GRAY && depth == 16) r.mode = Mode::I;
        else r.mode = ch == 1 ? Mode::L : ch == 2 ? Mode::LA : ch == 3 ? Mode::RGB : Mode::RGBA;
    }
    png_destroy_read_struct(&png, &info, nullptr);
    if (!fail.empty()) throw ImageError(fail);
    if (r.mode == Mode::I) {
        r.ipx.resize(size_t(r.w) * r.h);
        for (size_t i = 0; i < r.ipx.size(); i++) r.ipx[i] = raw[2 * i] << 8 | raw[2 * i + 1];
    } else {
        r.px.swap(raw);
    }
    return finish(r, factor, 1, r.w, r.h, orientation);
}

}  // namespace

std::vector<uint8_t> read_file(const std::string& path) {
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) throw ImageError("image file " + path + " does not exist");
    if (S_ISDIR(st.st_mode)) throw ImageError(path + " is a directory, not an image file");
    if (st.st_size == 0) throw ImageError("image file " + path + " is empty (0 bytes)");
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw ImageError("cannot open image file " + path + ": " + std::strerror(errno));
    std::vector<uint8_t> buf(size_t(st.st_size));
    size_t got = std::fread(buf.data(), 1, buf.size(), f);
    std::fclose(f);
    if (got != buf.size()) throw ImageError("cannot read image file " + path);
    return buf;
}

Image decode_image(const uint8_t* data, size_t size, const DecodeOptions& options) {
    if (size == 0) throw ImageError("empty image data (0 bytes)");
    if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return decode_jpeg(data, size, options);
    if (size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) return decode_png(data, size, options);
    throw ImageError("not a JPEG or PNG file (the native runner decodes JPEG and PNG; convert the "
                     "image, or use the Python runtime, which reads every format PIL reads)");
}

Image read_image(const std::string& path, const DecodeOptions& options) {
    std::vector<uint8_t> buf = read_file(path);
    try {
        return decode_image(buf.data(), buf.size(), options);
    } catch (const ImageError& e) {
        throw ImageError("cannot decode image " + path + ": " + e.what());
    }
}

}  // namespace edgeinfer
