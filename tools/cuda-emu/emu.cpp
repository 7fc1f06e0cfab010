#include "emu.h"
#include <ucontext.h>
#include <vector>
emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
float *emu_smem;
long emu_or_true, emu_or_false;
unsigned long emu_rounds;
unsigned long emu_blocks;

// Switching fibers: swapcontext saves and restores the signal mask, two
// system calls a switch, over half the time of a run of the whole backend
// (run suite). On x86-64 without ASan (which follows stack switches only
// through swapcontext) a fiber is a saved stack pointer instead: emu_switch
// pushes the callee-saved registers, stores rsp, loads the other's and pops
// its registers (the System V ABI leaves everything else to the caller).
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define EMU_FAST_SWITCH 1
extern "C" void emu_switch(void **save_sp, void *load_sp);
asm(".text\n"
    ".globl emu_switch\n"
    ".type emu_switch, @function\n"
    "emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size emu_switch, .-emu_switch\n");
#endif

namespace {
struct fiber {
#ifdef EMU_FAST_SWITCH
    void *sp;
#else
    ucontext_t ctx;
#endif
    char *stack;
    int state; // 0 runnable, 1 waiting, 2 done
    int kind, pred, xo;
    emu_dim3 idx; // threadIdx, set once a block
    unsigned char val[64], out[64];
    size_t sz;
};
std::vector<fiber> fibers;
// A warp gather's result: the 32 lanes' values in lane order, gathered once
// when the warp's step resolves, which each lane reads in place (a copy for
// each pair of lanes was most of a bf16 run's time). Warps resolve one at a
// time, and the next resolution waits for every lane of the warp to reach
// its next step, so one buffer serves them all.
alignas(16) unsigned char gathered[32 * 64];
int cur;
const std::function<void()> *body;
#ifdef EMU_FAST_SWITCH
void *sched_sp;
void to_sched() { emu_switch(&fibers[cur].sp, sched_sp); }
void to_fiber(unsigned t) { emu_switch(&sched_sp, fibers[t].sp); }
void entry() { (*body)(); fibers[cur].state = 2; to_sched(); }
// A new fiber's stack as emu_switch leaves a switched-out one: six
// registers, then entry as the return address; below that a slot for
// entry's own return address, so entry starts with rsp = 8 mod 16 as if
// called.
void start(fiber &f, size_t ss)
{
    uintptr_t *sp = (uintptr_t *)((uintptr_t)(f.stack + ss) & ~(uintptr_t)15);
    *--sp = 0;
    *--sp = (uintptr_t)entry;
    for (int r = 0; r < 6; r++) *--sp = 0;
    f.sp = sp;
}
#else
ucontext_t sched;
void to_sched() { swapcontext(&fibers[cur].ctx, &sched); }
void to_fiber(unsigned t) { swapcontext(&sched, &fibers[t].ctx); }
void entry() { (*body)(); fibers[cur].state = 2; to_sched(); }
void start(fiber &f, size_t ss)
{
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack; f.ctx.uc_stack.ss_size = ss; f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, entry, 0);
}
#endif
}
int emu_barrier(int kind, int pred, const void *val, void *out, int xo, size_t sz)
{
    fiber &f = fibers[cur];
    f.state = 1; f.kind = kind; f.pred = pred; f.xo = xo; f.sz = sz;
    if (sz) memcpy(f.val, val, sz);
    to_sched();
    if (kind == 2) return fibers[cur].pred;
    if (kind == 3) memcpy(out, fibers[cur].out, sz);
    if (kind == 4) *(const void **)out = gathered;
    return 0;
}
// Thread t's index in a block of blockDim threads.
static emu_dim3 thread_index(unsigned t)
{
    emu_dim3 i;
    i.x = t % blockDim.x;
    i.y = (t / blockDim.x) % blockDim.y;
    i.z = t / (blockDim.x * blockDim.y);
    return i;
}

// The schedule. Warps run one after another: each warp's lanes run (in
// lane order) until every one waits at a warp-wide step (shuffle, mma,
// ldmatrix: resolved for that warp alone, as on a GPU) or at a block barrier
// (or has exited); only when every warp waits at the block barrier is it
// resolved. So one warp runs ahead of the others from one barrier to the
// next, as a GPU may let it. CUDA_EMU_ORDER picks the order of the warps
// and of the lanes within a warp: forward (warp 0 first, the default),
// reverse, or shuffle (new permutations each pass, from a fixed seed). dvl's
// kernels use no atomics, so their results must not depend on it: a read of
// shared memory that lacks its barrier sees another warp's write in one
// order and not in the other (or the NaN fill), so runs in both orders find
// the missing barriers one order alone hides (CUDA_EMU_CP=eager beside it
// for cp.async, emu_mma.h).
static int order_mode = -1; // 0 forward, 1 reverse, 2 shuffle
static unsigned long long perm_state = 0x9e3779b97f4a7c15ull;
static int emu_order_mode()
{
    if (order_mode < 0) {
        const char *o = getenv("CUDA_EMU_ORDER");
        order_mode = !o || !*o || !strcmp(o, "forward") ? 0
                     : !strcmp(o, "reverse")              ? 1
                     : !strcmp(o, "shuffle")              ? 2
                                                          : -2;
        if (order_mode == -2) {
            fprintf(stderr, "EMU: CUDA_EMU_ORDER must be forward, reverse or shuffle, not '%s'\n", o);
            abort();
        }
    }
    return order_mode;
}
// 0 .. n-1 in the mode's order.
static void emu_order(std::vector<unsigned> &v, unsigned n)
{
    v.resize(n);
    const int m = emu_order_mode();
    for (unsigned i = 0; i < n; i++) v[i] = m == 1 ? n - 1 - i : i;
    if (m != 2) return;
    for (unsigned i = n; i > 1; i--) { // Fisher-Yates, xorshift64*
        perm_state ^= perm_state >> 12; perm_state ^= perm_state << 25; perm_state ^= perm_state >> 27;
        const unsigned j = (unsigned)((perm_state * 2685821657736338717ull) >> 33) % i;
        const unsigned x = v[i - 1]; v[i - 1] = v[j]; v[j] = x;
    }
}

void emu_run_block(unsigned block, unsigned threads, const std::function<void()> &fn)
{
    emu_dim3 b, d;
    b.x = block;
    d.x = threads; d.y = d.z = 1;
    emu_run_block3(b, d, fn);
}

// The static shared arrays' section (emu.h): the linker names its bounds
// in the module that holds it; weak, as a program may have none.
extern "C" char __start_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_emu_shared[] __attribute__((weak, visibility("hidden")));

void emu_run_block3(emu_dim3 block, emu_dim3 dim, const std::function<void()> &fn)
{
    const size_t SS = 1 << 18;
    const unsigned threads = dim.x * dim.y * dim.z;
    // The stacks outlive the block (and the process's static destructors,
    // so LeakSanitizer still finds them): a grid allocates them once.
    static std::vector<char *> &stacks = *new std::vector<char *>;
    while (stacks.size() < threads) stacks.push_back((char *)malloc(SS));
    fibers.resize(threads); // every field a block reads is set below or before use
    body = &fn;
    blockIdx = block; blockDim = dim;
    emu_blocks++;
    if (__start_emu_shared != __stop_emu_shared)
        memset(__start_emu_shared, 0xff, (size_t)(__stop_emu_shared - __start_emu_shared));
    for (unsigned t = 0; t < threads; t++) {
        fiber &f = fibers[t];
        f.idx = thread_index(t);
        f.stack = stacks[t];
        start(f, SS);
        f.state = 0;
    }
    const unsigned warps = (threads + 31) / 32;
    std::vector<unsigned> worder, lorder;
    for (;;) {
        emu_order(worder, warps);
        for (unsigned w : worder) {
            const unsigned l0 = 32 * w, n = threads - l0 < 32 ? threads - l0 : 32;
            for (;;) {
                emu_order(lorder, n);
                for (unsigned k : lorder)
                    if (fibers[l0 + k].state == 0) {
                        cur = (int)(l0 + k); threadIdx = fibers[cur].idx;
                        to_fiber(l0 + k);
                    }
                // Every lane waits or is done: at a warp-wide step, resolve it.
                int at_warp = 0, at_block = 0, kind = -1, xo = -1;
                size_t sz0 = 0;
                for (unsigned t = l0; t < l0 + n; t++) {
                    const fiber &f = fibers[t];
                    if (f.state == 2) continue;
                    if (f.kind == 1 || f.kind == 2) { at_block++; continue; }
                    at_warp++;
                    if (kind < 0) kind = f.kind, xo = f.xo, sz0 = f.sz;
                    if (f.kind != kind || (kind == 3 && f.xo != xo) || f.sz != sz0) {
                        fprintf(stderr, "EMU: divergent warp step in block %u,%u,%u warp %u (kinds %d/%d)\n", block.x, block.y, block.z, w, kind, f.kind);
                        abort();
                    }
                }
                if (!at_warp) break; // at the block barrier or done: the next warp
                if (at_block) {
                    fprintf(stderr, "EMU: block %u,%u,%u warp %u: lanes at a warp step and at a block barrier\n", block.x, block.y, block.z, w);
                    abort();
                }
                if (kind == 4)
                    for (unsigned l = 0; l < 32; l++) {
                        const unsigned p = l0 + l;
                        if (p >= threads || fibers[p].state != 1) {
                            fprintf(stderr, "EMU: warp gather: lane %u gone\n", p);
                            abort();
                        }
                        memcpy(gathered + l * sz0, fibers[p].val, sz0);
                    }
                else
                    for (unsigned t = l0; t < l0 + n; t++) {
                        if (fibers[t].state == 2) continue;
                        const unsigned p = l0 + ((t - l0) ^ (unsigned)xo);
                        if (p >= threads || fibers[p].state != 1) {
                            fprintf(stderr, "EMU: shuffle partner %u gone\n", p);
                            abort();
                        }
                        memcpy(fibers[t].out, fibers[p].val, sz0);
                    }
                emu_rounds++;
                for (unsigned t = l0; t < l0 + n; t++) if (fibers[t].state == 1) fibers[t].state = 0;
            }
        }
        // Every warp is at the block barrier (or done).
        int waiting = 0, done = 0, kind = -1;
        for (auto &f : fibers) {
            if (f.state == 2) { done++; continue; }
            waiting++;
            if (kind < 0) kind = f.kind;
            if (f.kind != kind) {
                fprintf(stderr, "EMU: divergent barrier in block %u,%u,%u (kinds %d/%d)\n", block.x, block.y, block.z, kind, f.kind);
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
        emu_rounds++;
        for (auto &f : fibers) if (f.state == 1) f.state = 0;
    }
}
