#include "emu.h"
#include <ucontext.h>
#include <vector>
emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
float *emu_smem;
long emu_or_true, emu_or_false;
namespace {
struct fiber {
    ucontext_t ctx;
    char *stack;
    int state; // 0 runnable, 1 waiting, 2 done
    int kind, pred, xo;
    unsigned char val[64], out[32 * 64];
    size_t sz;
};
std::vector<fiber> fibers;
ucontext_t sched;
int cur;
const std::function<void()> *body;
void entry() { (*body)(); fibers[cur].state = 2; swapcontext(&fibers[cur].ctx, &sched); }
}
int emu_barrier(int kind, int pred, const void *val, void *out, int xo, size_t sz)
{
    fiber &f = fibers[cur];
    f.state = 1; f.kind = kind; f.pred = pred; f.xo = xo; f.sz = sz;
    if (sz) memcpy(f.val, val, sz);
    swapcontext(&f.ctx, &sched);
    if (kind == 2) return fibers[cur].pred;
    if (kind == 3) memcpy(out, fibers[cur].out, sz);
    if (kind == 4) memcpy(out, fibers[cur].out, 32 * sz);
    return 0;
}
void emu_run_block(unsigned block, unsigned threads, const std::function<void()> &fn)
{
    const size_t SS = 1 << 18;
    fibers.assign(threads, fiber{});
    body = &fn;
    blockIdx.x = block; blockDim.x = threads;
    for (unsigned t = 0; t < threads; t++) {
        fiber &f = fibers[t];
        f.stack = (char *)malloc(SS);
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack; f.ctx.uc_stack.ss_size = SS; f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, entry, 0);
        f.state = 0;
    }
    for (;;) {
        for (unsigned t = 0; t < threads; t++)
            if (fibers[t].state == 0) {
                cur = (int)t; threadIdx.x = t;
                swapcontext(&sched, &fibers[t].ctx);
            }
        int waiting = 0, done = 0, kind = -1, xo = -1;
        size_t sz0 = 0;
        for (auto &f : fibers) {
            if (f.state == 2) { done++; continue; }
            waiting++;
            if (kind < 0) kind = f.kind, xo = f.xo, sz0 = f.sz;
            if (f.kind != kind || (kind == 3 && f.xo != xo) || ((kind == 3 || kind == 4) && f.sz != sz0)) {
                fprintf(stderr, "EMU: divergent barrier in block %u (kinds %d/%d)\n", block, kind, f.kind);
                abort();
            }
        }
        if (waiting == 0) break;
        if (kind == 1 && done) { fprintf(stderr, "EMU: __syncthreads with exited threads\n"); abort(); }
        if (kind == 2) {
            if (done) { fprintf(stderr, "EMU: __syncthreads_or with exited threads\n"); abort(); }
            int any = 0;
            for (auto &f : fibers) any |= f.pred;
            for (auto &f : fibers) f.pred = any;
            (any ? emu_or_true : emu_or_false)++;
        }
        if (kind == 3) {
            for (unsigned t = 0; t < threads; t++) {
                if (fibers[t].state == 2) continue;
                unsigned p = (t & ~31u) | ((t & 31u) ^ (unsigned)xo);
                if (p >= threads || fibers[p].state != 1) { fprintf(stderr, "EMU: shuffle partner %u gone\n", p); abort(); }
                memcpy(fibers[t].out, fibers[p].val, fibers[t].sz);
            }
        }
        if (kind == 4) {
            for (unsigned t = 0; t < threads; t++) {
                if (fibers[t].state == 2) continue;
                for (unsigned l = 0; l < 32; l++) {
                    unsigned p = (t & ~31u) | l;
                    if (p >= threads || fibers[p].state != 1) { fprintf(stderr, "EMU: warp gather: lane %u gone\n", p); abort(); }
                    memcpy(fibers[t].out + l * fibers[t].sz, fibers[p].val, fibers[t].sz);
                }
            }
        }
        for (auto &f : fibers) if (f.state == 1) f.state = 0;
    }
    for (auto &f : fibers) free(f.stack);
}
