// The column-sum, SwiGLU, column-slice and rotary kernels
// (src/ops/cuda/kernels.cu "column sums" and "silu, swiglu",
// src/ops/cuda/ops.cu slice_cols and rope) on the emulator
// against the CPU kernels (src/ops/cpu/elementwise.c, rows.c, rope.c, linked
// in): two tensors (ld = cols) and the halves of one (ld = 2 cols,
// dvl_swiglu_cat), either gradient NULL, rotary on dense heads and on a
// column range of a wider row (dvl_rope_cols), odd sizes and grids smaller
// than the data so the grid-stride loops wrap. SwiGLU's GPU sigmoid is float
// expf where the CPU evaluates in double: within 1e-6 relative; the slices
// are copies and sums of one term, the rotation rounds each product as the
// CPU does: equal to the bit. The column sum against a double-precision sum
// and, to the bit, against its own fixed order written out below.
#include "emu.h"
#include "emu_mma.h"
#include <algorithm>
#include "ops/cuda/cuda.h" // DVL_CUDA_COLSUM_CHUNK
using std::min;           // the device's min, as the column sum calls it
#include "elem.inc"
#include <random>
#include <vector>
extern "C" {
#include "ops/cpu/elementwise.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/rows.h"
}

template <class F> static void launch(unsigned blocks, unsigned threads, F f)
{
    gridDim.x = blocks;
    for (unsigned b = 0; b < blocks; b++)
        emu_run_block(b, threads, f);
}

static int fails = 0;

static void check(const char *what, const std::vector<float> &got, const std::vector<float> &want,
                  double tol)
{
    double worst = 0;
    for (size_t i = 0; i < want.size(); i++) {
        double e = fabs((double)got[i] - want[i]) / (1 + fabs((double)want[i]));
        if (!(e <= worst)) worst = e; // NaN counts as worst
    }
    bool ok = worst <= tol;
    printf("%-58s max rel %.2e (tol %.0e) %s\n", what, worst, tol, ok ? "ok" : "FAIL");
    fails += !ok;
}

static std::vector<float> randn(size_t n, unsigned seed, float std)
{
    std::mt19937 g(seed);
    std::normal_distribution<float> d(0, std);
    std::vector<float> v(n);
    for (auto &x : v) x = d(g);
    return v;
}

// The deterministic column sum, out[c] += sum_r a[r, c] (weighted: times
// x[r, c] * rstd[r], RMSNorm's weight gradient), on grid_y rows of blocks:
// fewer than the chunks, the blocks loop over chunks and the barrier after
// each chunk's lane sums guards their reuse (a missing one shows in reverse
// warp order, `run orders`). The GPU's order: per chunk of
// DVL_CUDA_COLSUM_CHUNK rows, lane l sums rows l, l + 8, ... in float, the
// lanes add in lane order, the chunks in double.
static void colsum_case(int64_t rows, int64_t cols, unsigned grid_y, bool weighted)
{
    const int64_t chunk = DVL_CUDA_COLSUM_CHUNK, nchunks = (rows + chunk - 1) / chunk;
    const unsigned tiles = (unsigned)((cols + 31) / 32), lanes = 8;
    std::vector<float> a = randn(rows * cols, 14, 1), x = randn(rows * cols, 15, 1);
    std::vector<float> rstd = randn(rows, 16, 1), out = randn(cols, 17, 1), out0 = out;
    std::vector<float> partial(nchunks * cols, NAN);
    const float *px = weighted ? x.data() : nullptr, *pr = weighted ? rstd.data() : nullptr;
    gridDim.x = tiles, gridDim.y = grid_y, gridDim.z = 1;
    for (unsigned by = 0; by < grid_y; by++)
        for (unsigned bx = 0; bx < tiles; bx++) {
            emu_dim3 b, d;
            b.x = bx, b.y = by, d.x = 32, d.y = lanes, d.z = 1;
            emu_run_block3(b, d, [&] {
                colsum_partial(partial.data(), a.data(), px, pr, rows, cols);
            });
        }
    gridDim.y = 1;
    launch(2, 64, [&] { colsum_finish(out.data(), partial.data(), nchunks, cols); });
    std::vector<float> exact(cols), ref(cols);
    for (int64_t c = 0; c < cols; c++) {
        double t = 0, d = 0;
        for (int64_t k = 0; k < nchunks; k++) {
            const int64_t r1 = std::min((k + 1) * chunk, rows);
            float p = 0;
            for (int64_t l = 0; l < (int64_t)lanes; l++) {
                float acc = 0;
                for (int64_t r = k * chunk + l; r < r1; r += lanes) {
                    float v = a[r * cols + c];
                    if (weighted) v *= x[r * cols + c] * rstd[r];
                    acc += v;
                    d += weighted ? (double)a[r * cols + c] * x[r * cols + c] * rstd[r]
                                  : (double)a[r * cols + c];
                }
                p += acc;
            }
            t += p;
        }
        exact[c] = (float)((double)out0[c] + t);
        ref[c] = (float)((double)out0[c] + d);
    }
    char what[128];
    snprintf(what, sizeof what, "colsum%s %lldx%lld, %lld chunks on %u, double sum",
             weighted ? " x*rstd" : "", (long long)rows, (long long)cols, (long long)nchunks,
             grid_y);
    check(what, out, ref, 2e-5);
    snprintf(what, sizeof what, "colsum%s %lldx%lld, %lld chunks on %u, its order",
             weighted ? " x*rstd" : "", (long long)rows, (long long)cols, (long long)nchunks,
             grid_y);
    check(what, out, exact, 0);
}

// rows x cols outputs; gate/up rows ld apart (up = gate + off within one
// buffer of rows x ld floats).
static void swiglu_case(int64_t rows, int64_t cols, bool halves, int grads, unsigned blocks)
{
    const int64_t ld = halves ? 2 * cols : cols, off = halves ? cols : 0;
    std::vector<float> a = randn(rows * ld, 1, 3), b = halves ? a : randn(rows * ld, 2, 1);
    const float *g = a.data(), *u = halves ? a.data() + off : b.data();
    std::vector<float> dy = randn(rows * cols, 3, 1);
    std::vector<float> y(rows * cols), yc(rows * cols);
    launch(blocks, 64, [&] { swiglu_fwd_k(y.data(), g, u, rows, cols, ld); });
    dvl_cpu_swiglu_fwd(yc.data(), g, u, rows, cols, ld);
    char what[128];
    snprintf(what, sizeof what, "swiglu fwd %lldx%lld%s, %u blocks", (long long)rows,
             (long long)cols, halves ? " (halves)" : "", blocks);
    check(what, y, yc, 1e-6);
    // Gradient buffers start from the same nonzero values (the kernels add).
    std::vector<float> dga = randn(rows * ld, 4, 1), dgb = halves ? dga : randn(rows * ld, 5, 1);
    std::vector<float> dga_c = dga, dgb_c = dgb;
    float *dg = dga.data(), *du = halves ? dga.data() + off : dgb.data();
    float *dgc = dga_c.data(), *duc = halves ? dga_c.data() + off : dgb_c.data();
    float *pg = grads & 1 ? dg : nullptr, *pu = grads & 2 ? du : nullptr;
    float *pgc = grads & 1 ? dgc : nullptr, *puc = grads & 2 ? duc : nullptr;
    launch(blocks, 64, [&] { swiglu_bwd_k(pg, pu, dy.data(), g, u, rows, cols, ld); });
    dvl_cpu_swiglu_bwd(pgc, puc, dy.data(), g, u, rows, cols, ld);
    snprintf(what, sizeof what, "swiglu bwd %lldx%lld%s, d%s", (long long)rows, (long long)cols,
             halves ? " (halves)" : "", grads == 3 ? "gate, dup" : grads == 1 ? "gate" : "up");
    check(what, dga, dga_c, 1e-5);
    if (!halves) { // the up gradient's own buffer
        strcat(what, " [up]");
        check(what, dgb, dgb_c, 1e-5);
    }
}

// The bf16 SwiGLU of the fused MLP (dvl_swiglu_mlp) on [gate | up] rows of
// bf16 bits: each output is the CPU kernel's f32 result on the widened
// inputs, rounded to bf16: equal, or one bf16 step away where the GPU's
// float expf and the CPU's double sigmoid straddle a rounding boundary
// (rare: counted, at most 1% of the elements).
static void swiglu_bf16_case(int64_t rows, int64_t cols, unsigned blocks)
{
    std::vector<float> gu = randn(rows * 2 * cols, 12, 3), da = randn(rows * cols, 13, 1);
    std::vector<uint16_t> gu16(gu.size()), da16(da.size());
    for (size_t i = 0; i < gu.size(); i++) gu16[i] = bf16_bits(gu[i]), gu[i] = bf16_float(gu16[i]);
    for (size_t i = 0; i < da.size(); i++) da16[i] = bf16_bits(da[i]), da[i] = bf16_float(da16[i]);
    std::vector<uint16_t> a16(rows * cols), dgu16(rows * 2 * cols, 0xffff);
    launch(blocks, 64, [&] { swiglu_fwd_bf16_k(a16.data(), gu16.data(), rows, cols); });
    launch(blocks, 64,
           [&] { swiglu_bwd_bf16_k(dgu16.data(), da16.data(), gu16.data(), rows, cols); });
    std::vector<float> a(rows * cols), dgu(rows * 2 * cols, 0.0f);
    dvl_cpu_swiglu_fwd(a.data(), gu.data(), gu.data() + cols, rows, cols, 2 * cols);
    dvl_cpu_swiglu_bwd(dgu.data(), dgu.data() + cols, da.data(), gu.data(), gu.data() + cols, rows,
                       cols, 2 * cols);
    for (int pass = 0; pass < 2; pass++) {
        const std::vector<uint16_t> &got = pass ? dgu16 : a16;
        const std::vector<float> &want = pass ? dgu : a;
        size_t off = 0, bad = 0;
        for (size_t i = 0; i < want.size(); i++) {
            const uint16_t w = bf16_bits(want[i]);
            if (got[i] == w) continue;
            const int diff = (int)got[i] - (int)w; // same sign: adjacent bit patterns, one step
            if ((got[i] ^ w) < 0x8000 && (diff == 1 || diff == -1)) off++;
            else bad++;
        }
        const bool ok = bad == 0 && off * 100 <= want.size();
        printf("swiglu %s bf16 %lldx%lld, %u blocks: %zu of %zu one bf16 step off, %zu worse %s\n",
               pass ? "bwd" : "fwd", (long long)rows, (long long)cols, blocks, off, want.size(),
               bad, ok ? "ok" : "FAIL");
        fails += !ok;
    }
}

static void slice_case(int64_t rows, int64_t cols, int64_t start, int64_t n, unsigned blocks)
{
    std::vector<float> x = randn(rows * cols, 6, 1), y(rows * n), yc(rows * n);
    launch(blocks, 64, [&] { slice_cols_fwd_k(y.data(), x.data(), rows, cols, start, n); });
    dvl_cpu_slice_cols_fwd(yc.data(), x.data(), rows, cols, start, n);
    char what[128];
    snprintf(what, sizeof what, "slice_cols fwd [%lld, %lld) of %lldx%lld, %u blocks",
             (long long)start, (long long)(start + n), (long long)rows, (long long)cols, blocks);
    check(what, y, yc, 0);
    std::vector<float> gy = randn(rows * n, 7, 1), gx = randn(rows * cols, 8, 1), gxc = gx;
    launch(blocks, 64, [&] { slice_cols_bwd_k(gx.data(), gy.data(), rows, cols, start, n); });
    dvl_cpu_slice_cols_bwd(gxc.data(), gy.data(), rows, cols, start, n);
    snprintf(what, sizeof what, "slice_cols bwd [%lld, %lld) of %lldx%lld", (long long)start,
             (long long)(start + n), (long long)rows, (long long)cols);
    check(what, gx, gxc, 0);
}

// Rotary over tokens x H heads of D, x's tokens ld floats apart (from its
// column `start`), against the CPU kernels, forward and backward.
static void rope_case(int64_t tokens, int64_t H, int64_t D, int64_t ld, int64_t start,
                      unsigned blocks)
{
    std::vector<int32_t> pos(tokens);
    for (int64_t t = 0; t < tokens; t++) pos[t] = (int32_t)((t * 977) % 5000);
    std::vector<float> cs(tokens * D / 2), sn(tokens * D / 2), inv(D / 2);
    dvl_cpu_rope_table(cs.data(), sn.data(), inv.data(), pos.data(), tokens, D, 1e4f);
    std::vector<float> x = randn(tokens * ld, 9, 1), y(tokens * H * D), yc(tokens * H * D);
    launch(blocks, 64, [&] {
        rope_k(y.data(), x.data() + start, cs.data(), sn.data(), tokens, H, D, ld, 0);
    });
    dvl_cpu_rope_fwd(yc.data(), x.data() + start, cs.data(), sn.data(), tokens, H, D, ld);
    char what[128];
    snprintf(what, sizeof what, "rope fwd %lld tokens x %lld x %lld, ld %lld from %lld",
             (long long)tokens, (long long)H, (long long)D, (long long)ld, (long long)start);
    check(what, y, yc, 0);
    std::vector<float> gy = randn(tokens * H * D, 10, 1), gx = randn(tokens * ld, 11, 1);
    std::vector<float> gxc = gx;
    launch(blocks, 64, [&] {
        rope_k(gx.data() + start, gy.data(), cs.data(), sn.data(), tokens, H, D, ld, 1);
    });
    dvl_cpu_rope_bwd(gxc.data() + start, gy.data(), cs.data(), sn.data(), tokens, H, D, ld);
    snprintf(what, sizeof what, "rope bwd %lld tokens x %lld x %lld, ld %lld from %lld",
             (long long)tokens, (long long)H, (long long)D, (long long)ld, (long long)start);
    check(what, gx, gxc, 0);
}

int main()
{
    colsum_case(1000, 40, 2, false); // 4 chunks on 2 rows of blocks: each loops twice
    colsum_case(777, 70, 1, true);   // 4 chunks on 1, a partial last chunk and tile
    colsum_case(300, 33, 2, true);   // one chunk a block
    swiglu_case(1, 1001, false, 3, 3);
    swiglu_case(7, 33, false, 1, 2);
    swiglu_case(7, 33, false, 2, 1);
    swiglu_case(13, 29, true, 3, 2);
    swiglu_case(5, 64, true, 1, 7);
    swiglu_case(5, 64, true, 2, 1);
    swiglu_bf16_case(7, 33, 2);
    swiglu_bf16_case(64, 96, 5);
    slice_case(9, 40, 0, 24, 2);   // q of q|k|v
    slice_case(9, 40, 24, 8, 1);   // k
    slice_case(9, 40, 32, 8, 5);   // v
    slice_case(1, 7, 3, 0, 1);     // empty
    slice_case(300, 11, 1, 9, 3);
    rope_case(7, 3, 8, 24, 0, 2);   // dense
    rope_case(9, 2, 8, 40, 0, 3);   // q of a q|k|v row of 40
    rope_case(9, 1, 8, 40, 16, 1);  // k
    rope_case(5, 4, 6, 30, 3, 7);
    printf("%s\n", fails ? "elem: FAILED" : "elem: all passed");
    return fails != 0;
}
