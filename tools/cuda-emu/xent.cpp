// The fused cross-entropy's chunk kernels (src/ops/cuda/ops.cu, "fused
// cross-entropy: kernels") on the emulator, driven as ops/cross_entropy.c
// drives them on the GPU: gather the supervised rows, then per vocabulary
// chunk Z = h_s W_c^T (a plain float loop here, cuBLAS there) and the
// kernels; backward recomputes Z, turns it into dZ, dh_s += dZ W_c,
// dW_c += dZ^T h_s, scatter. Checked against
//   - a double-precision reference over the whole [n, V] logits, and
//   - the CPU implementation itself (dvl_cpu_linear_cross_entropy_fwd/bwd,
//     src/ops/cpu/cross_entropy.c, linked in), in "exact" cases on logits
//     that every GEMM computes without rounding (multiples of 1/8 as
//     inputs), where the maxima and label logits must match bit for bit and
//     the log-sums to 2 ulp: the same maths, not just the same answer.
#include "emu.h"
#include "xent.inc"
#include <random>
#include <vector>
extern "C" {
#include "ops/cpu/cross_entropy.h"
}

// Run kernel body f on `blocks` blocks of `threads` fibers.
template <class F> static void launch(unsigned blocks, unsigned threads, F f)
{
    gridDim.x = blocks;
    for (unsigned b = 0; b < blocks; b++)
        emu_run_block(b, threads, f);
}

struct xcase {
    const char *name;
    int64_t n, V, C, d;
    bool weighted;
    int labels;   // 0 random, 1 all in the first chunk, 2 all in the last, 3 columns 0 and V-1
    int wmode;    // 0 plain; 1 the max in chunk 0 (its W rows scaled up); 2 W rows growing with j
    bool exact;   // inputs multiples of 1/8: every GEMM gives the same Z bit for bit
    float wstd;   // of W (h has std 1)
    unsigned lse_grid, dz_grid; // grids smaller than the launchers' exercise the kernels' loops
};

static double scale_err(const float *g, const std::vector<double> &r)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < r.size(); i++) {
        if (!std::isfinite(g[i])) return 1e9;
        md = fmax(md, fabs(g[i] - r[i])); mr = fmax(mr, fabs(r[i]));
    }
    return mr > 0 ? md / mr : md;
}
static double scale_err_f(const std::vector<float> &g, const std::vector<float> &r)
{
    std::vector<double> rd(r.begin(), r.end());
    return scale_err(g.data(), rd);
}

// z [n, C] = hs [n, d] W[c0 .. c0+C)^T in float, k ascending.
static void gemm_zt(float *z, const float *hs, const float *w, int64_t n, int64_t C, int64_t d)
{
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < C; j++) {
            float s = 0;
            for (int64_t k = 0; k < d; k++) s += hs[r * d + k] * w[j * d + k];
            z[r * C + j] = s;
        }
}

static int run(const xcase &c)
{
    const int64_t n = c.n, V = c.V, C = c.C, d = c.d, nh = 2 * n + 1;
    const float g = 0.7f;
    std::mt19937 rng(77 + (unsigned)(n * 131 + V * 7 + C));
    std::normal_distribution<float> nd(0, 1);
    auto val = [&](float std) {
        float x = nd(rng) * std;
        if (c.exact) x = fminf(fmaxf(roundf(x * 8) / 8, -2.0f), 2.0f); // k/8, |x| <= 2
        return x;
    };
    std::vector<float> h(nh * d), w(V * d), wt(n);
    for (auto &x : h) x = val(1.0f);
    for (int64_t j = 0; j < V; j++)
        for (int64_t k = 0; k < d; k++) {
            float x = val(c.wstd);
            if (c.wmode == 1 && j < C) x *= 2.0f;                 // exact stays exact
            if (c.wmode == 2) x *= c.exact ? (float)(1 + 4 * j / V) : 1.0f + 3.0f * j / V;
            w[j * d + k] = x;
        }
    std::vector<int32_t> rows(2 * n);  // supervised row k is row 2k+1 of h; then the labels
    int32_t *lab = rows.data() + n;
    const int64_t last0 = (V - 1) / C * C;
    for (int64_t k = 0; k < n; k++) {
        rows[k] = (int32_t)(2 * k + 1);
        int64_t y = rng() % V;
        if (c.labels == 1) y = rng() % (C < V ? C : V);
        if (c.labels == 2) y = last0 + rng() % (V - last0);
        if (c.labels == 3) y = k % 2 ? V - 1 : 0;
        lab[k] = (int32_t)y;
        wt[k] = c.weighted ? 0.25f + (float)(rng() % 8) / 4 : 1.0f;
    }
    const float *wp = c.weighted ? wt.data() : nullptr;

    // ---- double reference over the whole logits
    double Lref = 0;
    std::vector<double> lse(n), dH(nh * d, 0), dW(V * d, 0);
    std::vector<int> max_chunk(n);
    for (int64_t k = 0; k < n; k++) {
        const float *hr = &h[rows[k] * d];
        std::vector<double> z(V);
        double mx = -INFINITY; int64_t am = 0;
        for (int64_t j = 0; j < V; j++) {
            double s = 0;
            for (int64_t e = 0; e < d; e++) s += (double)hr[e] * w[j * d + e];
            z[j] = s;
            if (s > mx) mx = s, am = j;
        }
        max_chunk[k] = (int)(am / C);
        double sum = 0;
        for (int64_t j = 0; j < V; j++) sum += exp(z[j] - mx);
        lse[k] = mx + log(sum);
        const double wk = wp ? wp[k] : 1.0;
        Lref += wk * (lse[k] - z[lab[k]]);
        for (int64_t j = 0; j < V; j++) {
            const double dz = g * wk * (exp(z[j] - lse[k]) - (j == lab[k]));
            for (int64_t e = 0; e < d; e++) {
                dH[rows[k] * d + e] += dz * w[j * d + e];
                dW[j * d + e] += dz * hr[e];
            }
        }
    }
    int later = 0, moved = 0; // label in a later chunk than the max; max after chunk 0 (rescaled sums)
    for (int64_t k = 0; k < n; k++) later += lab[k] / C > max_chunk[k], moved += max_chunk[k] > 0;

    // ---- the GPU path, kernels on the emulator
    std::vector<float> hs(n * d), z(n * C), m(n), ls(n), zy(n, NAN), dhs(n * d, 0);
    std::vector<float> gh(nh * d, 0), gw(V * d, 0);
    std::vector<double> s(n, 1e300); // garbage the first chunk must not read
    m.assign(n, 1e30f);
    for (int64_t k = 0; k < n; k++) memcpy(&hs[k * d], &h[rows[k] * d], d * 4);
    for (int64_t c0 = 0; c0 < V; c0 += C) {
        const int64_t Cc = V - c0 < C ? V - c0 : C;
        gemm_zt(z.data(), hs.data(), &w[c0 * d], n, Cc, d);
        launch(c.lse_grid, XENT_THREADS, [&] { xent_lse_chunk_k(m.data(), s.data(), zy.data(), z.data(), lab, n, Cc, c0); });
    }
    float loss = NAN;
    launch(1, XENT_THREADS, [&] { xent_finish_k(&loss, ls.data(), m.data(), s.data(), zy.data(), wp, n); });
    for (int64_t c0 = 0; c0 < V; c0 += C) {
        const int64_t Cc = V - c0 < C ? V - c0 : C;
        gemm_zt(z.data(), hs.data(), &w[c0 * d], n, Cc, d);
        launch(c.dz_grid, 256, [&] { xent_dz_chunk_k(z.data(), m.data(), ls.data(), lab, wp, &g, n, Cc, c0); });
        for (int64_t r = 0; r < n; r++) // dh_s += dZ W_c
            for (int64_t e = 0; e < d; e++) {
                float a = dhs[r * d + e];
                for (int64_t j = 0; j < Cc; j++) a += z[r * Cc + j] * w[(c0 + j) * d + e];
                dhs[r * d + e] = a;
            }
        for (int64_t j = 0; j < Cc; j++) // dW_c += dZ^T h_s
            for (int64_t e = 0; e < d; e++) {
                float a = gw[(c0 + j) * d + e];
                for (int64_t r = 0; r < n; r++) a += z[r * Cc + j] * hs[r * d + e];
                gw[(c0 + j) * d + e] = a;
            }
    }
    for (int64_t k = 0; k < n; k++)
        for (int64_t e = 0; e < d; e++) gh[rows[k] * d + e] += dhs[k * d + e];

    // ---- the CPU implementation on the same inputs and chunk
    std::vector<char> scratch(dvl_cpu_linear_cross_entropy_scratch(n, d, C) + 64);
    void *sc = (void *)(((uintptr_t)scratch.data() + 63) / 64 * 64);
    std::vector<float> cm(n), cls(n), ch(nh * d, 0), cw(V * d, 0);
    float closs = NAN;
    dvl_cpu_linear_cross_entropy_fwd(&closs, cm.data(), cls.data(), sc, h.data(), w.data(), rows.data(), lab, wp, n, d, V, C);
    dvl_cpu_linear_cross_entropy_bwd(ch.data(), cw.data(), sc, h.data(), w.data(), rows.data(), lab, wp, cm.data(), cls.data(), g, n, d, V, C);

    // ---- errors
    double e_loss = fabs(loss - Lref) / fmax(fabs(Lref), 1.0), e_lse = 0;
    for (int64_t k = 0; k < n; k++) e_lse = fmax(e_lse, fabs((double)m[k] + ls[k] - lse[k]) / fmax(fabs(lse[k]), 1.0));
    const double e_dh = scale_err(gh.data(), dH), e_dw = scale_err(gw.data(), dW);
    double c_loss = fabs((double)loss - closs) / fmax(fabs((double)closs), 1.0), c_m = 0, c_ls = 0;
    for (int64_t k = 0; k < n; k++) {
        c_m = fmax(c_m, fabs((double)m[k] - cm[k]) / fmax(fabs((double)cm[k]), 1.0));
        c_ls = fmax(c_ls, fabs((double)ls[k] - cls[k]) / fmax(fabs((double)cls[k]), 1.0));
    }
    const double c_dh = scale_err_f(gh, ch), c_dw = scale_err_f(gw, cw);
    // Against the reference: the products' f32 rounding (d terms) dominates.
    // Against the CPU: in exact cases Z agrees bit for bit, so the maxima
    // must be equal and the log-sums (double sums in another order, then
    // rounded to float) within 2 ulp; the loss (a double sum rounded once)
    // within 2 ulp; dh, dW go through f32 GEMMs of dZ in different orders.
    const double ulp = 1.2e-7;
    bool ok = e_loss <= 1e-5 && e_lse <= 1e-5 && e_dh <= 1e-4 && e_dw <= 1e-4 &&
              c_loss <= 1e-5 && c_dh <= 1e-4 && c_dw <= 1e-4 && std::isfinite(loss);
    if (c.exact) ok = ok && c_m == 0 && c_ls <= 2 * ulp && c_loss <= 2 * ulp;
    printf("%-4s %-44s ref: loss %.1e lse %.1e dh %.1e dW %.1e | cpu: loss %.1e max %.1e logsum %.1e dh %.1e dW %.1e | rows: label after max %d, max after chunk 0 %d\n",
           ok ? "ok" : "FAIL", c.name, e_loss, e_lse, e_dh, e_dw, c_loss, c_m, c_ls, c_dh, c_dw, later, moved);
    return ok ? 0 : 1;
}

int main()
{
    // name, n, V, C, d, weighted, labels, wmode, exact, wstd, lse_grid, dz_grid
    // Rows x chunks is what costs (each row-chunk block does 24 block-wide
    // rendezvous of 256 fibers): ~700 in all, about a minute under ASan.
    const xcase cs[] = {
        {"n=1 V=13 C=5 (last chunk short)", 1, 13, 5, 8, false, 2, 0, false, 1, 1, 1},
        {"n=1 V=13 C=13 (C = V) weighted", 1, 13, 13, 8, true, 0, 0, false, 1, 1, 1},
        {"n=7 V=100 C=100 (C = V)", 7, 100, 100, 16, false, 0, 0, false, 1, 7, 3},
        {"n=7 V=1000 C=256 labels first chunk", 7, 1000, 256, 16, true, 1, 2, false, 0.5f, 3, 5},
        {"n=7 V=1000 C=256 labels last chunk", 7, 1000, 256, 16, false, 2, 1, false, 0.5f, 7, 5},
        {"n=33 V=1000 C=300 weighted", 33, 1000, 300, 24, true, 0, 0, false, 0.5f, 33, 40},
        {"n=33 V=300 C=100 max early, labels late", 33, 300, 100, 16, true, 2, 1, false, 0.5f, 5, 13},
        {"n=7 V=300 C=64 max late (rescaling)", 7, 300, 64, 16, false, 1, 2, false, 0.5f, 7, 13},
        {"n=7 V=12 C=1 (one column a chunk)", 7, 12, 1, 8, true, 3, 0, false, 1, 2, 1},
        {"n=7 V=50 C=7 labels 0 and V-1", 7, 50, 7, 8, false, 3, 2, false, 1, 7, 1},
        {"n=7 V=500 C=128 logits ~100", 7, 500, 128, 32, true, 0, 0, false, 20, 7, 4},
        {"exact n=1 V=13 C=5", 1, 13, 5, 8, true, 2, 0, true, 1, 1, 1},
        {"exact n=7 V=1000 C=256 max early", 7, 1000, 256, 16, true, 2, 1, true, 0.5f, 7, 5},
        {"exact n=33 V=300 C=100 max late", 33, 300, 100, 16, false, 1, 2, true, 0.5f, 33, 13},
        {"exact n=33 V=600 C=600 (C = V) weighted", 33, 600, 600, 32, true, 3, 0, true, 0.5f, 9, 11},
    };
    int fails = 0;
    for (const auto &c : cs) fails += run(c);
    printf("xent: %d of %zu failed\n", fails, sizeof cs / sizeof *cs);
    return fails != 0;
}
