// Oracle for the engine's reference quantizers and its `convert` (crates/phi2/src/{quantize,convert}.rs):
// calls llama.cpp's own code, as shipped in node-llama-cpp's prebuilt CPU binaries.
//
//   oracle rows OUTDIR          deterministic f32 test rows -> OUTDIR/input.f32 and, for each type,
//                               OUTDIR/<type>.bin from ggml's quantize_row_<type>_ref (and the
//                               f32 -> f16 / bf16 row converters)
//   oracle quantize IN OUT FTYPE
//                               llama_model_quantize(IN, OUT) with llama-quantize's defaults
//                               (no imatrix, 1 thread) for the llama_ftype number FTYPE
//   oracle tensors FILE         one line per tensor of a GGUF: name, ggml type name, absolute
//                               data offset, byte size
//
// Built and run by scripts/golden-quant/run.sh; see there.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "ggml.h"
#include "gguf.h"
#include "llama.h"

void quantize_row_q8_0_ref(const float * x, void * y, int64_t k);
void quantize_row_q4_0_ref(const float * x, void * y, int64_t k);
void quantize_row_q4_1_ref(const float * x, void * y, int64_t k);
void quantize_row_q5_0_ref(const float * x, void * y, int64_t k);
void quantize_row_q5_1_ref(const float * x, void * y, int64_t k);
void quantize_row_q4_K_ref(const float * x, void * y, int64_t k);
void quantize_row_q5_K_ref(const float * x, void * y, int64_t k);
void quantize_row_q6_K_ref(const float * x, void * y, int64_t k);

#define N_PER_ROW 512
#define N_ROWS 40

static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void) { // SplitMix64
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
// approximately normal, from four 16-bit uniforms: mean 0, std 1
static double normal(void) {
    uint64_t r = next_u64();
    double s = 0;
    for (int i = 0; i < 4; i++) s += (double)((r >> (16 * i)) & 0xFFFF);
    return (s / 65535.0 - 2.0) * 1.7320508075688772;
}

static void fill_row(int r, float * x) {
    const int n = N_PER_ROW;
    for (int i = 0; i < n; i++) {
        double g = normal();
        float v;
        switch (r) {
        case 0: v = 0.0f; break;                                    // all zero
        case 1: v = 0.25f; break;                                   // constant positive
        case 2: v = -3.0f; break;                                   // constant negative
        case 3: v = (float)(g * 1e-20); break;                      // below GROUP_MAX_EPS-sized scales
        case 4: v = (float)(fabs(g) * 0.05); break;                 // all positive
        case 5: v = (float)(-fabs(g) * 0.05); break;                // all negative
        case 6: v = (float)((int)(g * 4)) * 0.5f; break;            // coarse grid: many exact ties
        case 7: v = (float)(g * 1e4); break;                        // large
        case 8: v = (i % 32 == 7) ? 1.0f : 0.0f; break;             // one spike per block
        case 9: v = (float)(i % 17) - 8.0f; break;                  // integer ramp
        case 10: v = (float)(g * 1e-3) + ((i % 64 == 0) ? 0.5f : 0.0f); break;
        case 11: { uint32_t b = (uint32_t)(next_u64() & 0x007FFFFF) | ((next_u64() & 1) << 31); memcpy(&v, &b, 4); break; } // subnormals
        case 12: v = (i < n / 2) ? (float)(g * 0.02) : 0.0f; break; // half the super-blocks empty
        case 13: v = (float)(g * 0.02) * ((i / 32) % 2 ? 1.0f : 1e-6f); break; // alternating sub-block magnitudes
        case 14: v = (float)(g * 0.02); v = (float)(int)(v * 65536.0f) / 65536.0f; break; // bf16-like values
        default: {
            double scale = 0.002 * (double)(1 + r % 7) * (r % 3 ? 1.0 : 10.0);
            v = (float)(g * scale);
            if (next_u64() % 97 == 0) v *= 8.0f;                    // outliers, as in real weights
            if (r % 5 == 0) v += 0.01f;                            // an offset
        }
        }
        x[i] = v;
    }
}

struct qtype { const char * name; void (*f)(const float *, void *, int64_t); size_t block, bytes; };

static int write_file(const char * dir, const char * name, const void * p, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) { perror(path); return 1; }
    return 0;
}

static int rows(const char * dir) {
    const size_t n = (size_t)N_PER_ROW * N_ROWS;
    float * x = malloc(n * sizeof(float));
    for (int r = 0; r < N_ROWS; r++) fill_row(r, x + (size_t)r * N_PER_ROW);
    if (write_file(dir, "input.f32", x, n * sizeof(float))) return 1;
    const struct qtype types[] = {
        {"q8_0", quantize_row_q8_0_ref, 32, 34},  {"q4_0", quantize_row_q4_0_ref, 32, 18},
        {"q4_1", quantize_row_q4_1_ref, 32, 20},  {"q5_0", quantize_row_q5_0_ref, 32, 22},
        {"q5_1", quantize_row_q5_1_ref, 32, 24},  {"q4_K", quantize_row_q4_K_ref, 256, 144},
        {"q5_K", quantize_row_q5_K_ref, 256, 176}, {"q6_K", quantize_row_q6_K_ref, 256, 210},
    };
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        size_t bytes = n / types[t].block * types[t].bytes;
        uint8_t * y = calloc(1, bytes);
        for (int r = 0; r < N_ROWS; r++)
            types[t].f(x + (size_t)r * N_PER_ROW, y + (size_t)r * N_PER_ROW / types[t].block * types[t].bytes, N_PER_ROW);
        char name[64];
        snprintf(name, sizeof name, "%s.bin", types[t].name);
        if (write_file(dir, name, y, bytes)) return 1;
        free(y);
    }
    ggml_fp16_t * h = malloc(n * sizeof(ggml_fp16_t));
    ggml_fp32_to_fp16_row(x, h, (int64_t)n);
    if (write_file(dir, "f16.bin", h, n * 2)) return 1;
    ggml_bf16_t * b = malloc(n * sizeof(ggml_bf16_t));
    ggml_fp32_to_bf16_row_ref(x, b, (int64_t)n);
    if (write_file(dir, "bf16.bin", b, n * 2)) return 1;
    return 0;
}

static int quantize(const char * in, const char * out, int ftype) {
    llama_backend_init();
    llama_model_quantize_params p = llama_model_quantize_default_params();
    p.nthread = 1;
    p.ftype = (enum llama_ftype)ftype;
    uint32_t rc = llama_model_quantize(in, out, &p);
    if (rc != 0) { fprintf(stderr, "llama_model_quantize(%s, ftype %d) failed: %u\n", in, ftype, rc); return 1; }
    return 0;
}

static int tensors(const char * file) {
    struct gguf_init_params ip = { /*no_alloc*/ true, /*ctx*/ NULL };
    struct gguf_context * g = gguf_init_from_file(file, ip);
    if (!g) { fprintf(stderr, "cannot read %s\n", file); return 1; }
    size_t data = gguf_get_data_offset(g);
    for (int64_t i = 0; i < gguf_get_n_tensors(g); i++) {
        printf("%s %s %zu %zu\n", gguf_get_tensor_name(g, i), ggml_type_name(gguf_get_tensor_type(g, i)),
               data + gguf_get_tensor_offset(g, i), gguf_get_tensor_size(g, i));
    }
    gguf_free(g);
    return 0;
}

int main(int argc, char ** argv) {
    if (argc == 3 && !strcmp(argv[1], "rows")) return rows(argv[2]);
    if (argc == 5 && !strcmp(argv[1], "quantize")) return quantize(argv[2], argv[3], atoi(argv[4]));
    if (argc == 3 && !strcmp(argv[1], "tensors")) return tensors(argv[2]);
    fprintf(stderr, "usage: oracle rows OUTDIR | quantize IN OUT FTYPE | tensors FILE\n");
    return 2;
}
