#!/bin/sh
# dvl-train with train.device=cuda end to end, on the tiny random VLM and the
# small synthetic dataset of test_train.sh (made here):
#   stage 2, 8 steps: the GPU's loss curve is the CPU's (step 1, before any
#     update, within 1e-5 relative: the same weights and noise, f32 on both,
#     only summation orders differ; steps 2..8 within 1e-3 relative, where
#     those differences have gone through AdamW) and the loss falls;
#   held-out evaluation (eval.path) in that run: at the start within 1e-5
#     of the CPU's, at steps 4 and 8 within 1e-3; the GPU run with it trains
#     to the bits of one without (the checkpoint_layers case below);
#   stage 2 in bf16 with f32 activations (train.bf16_activations false)
#     follows f32 too, and differs from the default (bf16 MLP activations);
#   stage 1 in bf16 with the frozen weights' bf16 copies
#     (train.bf16_weight_copies frozen, the default) and without, and stage 2
#     with copies of every weight (all) and without: the same bits;
#   exact resume on the GPU: a run checkpointed at step 4 and resumed there
#     reaches the uninterrupted run's step-8 weights and AdamW state bit for
#     bit; the GPU checkpoint also resumes on the CPU;
#   2 ranks under mpirun = 1 rank (stage ar, global batch 12, 6 steps; every
#     step's loss within 1e-5 relative, final weights within 1e-5, as the CPU
#     test), the ranks' weights compared every step, on both reduction
#     paths: NCCL and MPI through host memory (ranks sharing one GPU take
#     the host path, and NCCL with an NCCL_HOSTID each: see below);
#   the same with ZeRO-1 (dist.zero1: moments sharded, gradients reduced to
#     the shard owners, weights gathered), and a ZeRO-1 GPU checkpoint
#     resumes bit-exactly (through NCCL where libnccl.so.2 loads).
# Without a usable GPU it skips (exit 77), unless DVL_REQUIRE_CUDA=1.
#
#   test_train_cuda.sh DVL_TRAIN DVL_PREP DVL_CONVERT SOURCE_ROOT [MPIRUN]
set -u
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
TRAIN=$(abs "$1")
PREP=$(abs "$2")
CONVERT=$(abs "$3")
SRC=$(cd "$4" && pwd)
MPI=${5:-mpirun}
T=$(mktemp -d /tmp/dvl-test-train-cuda-XXXXXX)
# DVL_TEST_LOGS=FILE.tar.gz keeps the runs' logs and metrics (not their weights).
trap '[ -n "${DVL_TEST_LOGS:-}" ] && tar -C "$T" -czf "$DVL_TEST_LOGS" --exclude="*.safetensors" \
    --exclude=ds --exclude=syn . 2>/dev/null; rm -rf "$T"' EXIT
MPIRUN="$MPI --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1"
. "$SRC/train/test_lib.sh"
ST="$ST"'
def losses(d): return [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl")]
'

cd "$T" || exit 1
"$PREP" synth --out syn --n 96 --heldout 0 --seed 3 --size 64 >/dev/null &&
    "$PREP" build --json syn/train.json --images syn --tokenizer syn/tokenizer --out ds \
        --image-size 28 --image-tokens 4 --shard-size 50 --threads 1 --quiet >/dev/null &&
    "$CONVERT" init --random "$SRC/configs/models/tiny-vlm.json" --seed 1 --out m0 >/dev/null &&
    "$PREP" synth --out sev --n 12 --heldout 0 --seed 9 --size 64 >/dev/null &&
    "$PREP" build --json sev/train.json --images sev --tokenizer sev/tokenizer --out ev \
        --image-size 28 --image-tokens 4 --shard-size 50 --threads 1 --quiet >/dev/null ||
    { echo "FAIL setup"; exit 1; }
# log.mfu off but where a case reads the MFU header: the peak it measures is
# a 4096^3 product, instant on a GPU, 10-17 s a run on the emulated device.
cat >s2.json <<'EOF'
{"model": {"path": "m0"}, "data": {"path": "ds"}, "log": {"mfu": false},
 "train": {"stage": "2", "out": "s2", "epochs": 3, "micro_batch": 4, "global_batch": 8,
           "vision_trainable": true, "max_steps": 8},
 "optim": {"lr": 3e-3, "vision_lr": 6e-4, "warmup_steps": 2},
 "diffusion": {"block_size": 8, "mask_token_id": 412, "eos_token_id": 410},
 "ckpt": {"every": 4, "keep_last": 0}}
EOF
cat >s1.json <<'EOF'
{"model": {"path": "m0"}, "data": {"path": "ds"}, "log": {"mfu": false},
 "train": {"stage": "1", "out": "s1", "micro_batch": 4, "global_batch": 8, "max_steps": 4,
           "device": "cuda", "precision": "bf16"},
 "optim": {"lr": 1e-2, "warmup_steps": 2}}
EOF
cat >ar.json <<'EOF'
{"model": {"path": "m0"}, "data": {"path": "ds"}, "log": {"mfu": false},
 "train": {"stage": "ar", "out": "ar", "micro_batch": 2, "global_batch": 12, "max_steps": 6,
           "vision_trainable": true, "device": "cuda"},
 "optim": {"lr": 3e-3, "vision_lr": 3e-3, "warmup_steps": 2},
 "dist": {"check_every": 1}}
EOF

# ---- the GPU run first: it also tells whether there is a GPU at all
EV="eval.path=ev eval.at_start=true eval.every=4"
"$TRAIN" --config s2.json --set train.device=cuda --set train.out=gpu $EV >gpu.log 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -q -e "no CUDA device is usable" -e "built without CUDA" gpu.log; then
    case "${DVL_REQUIRE_CUDA:-}" in
    "" | 0) echo "skip: $(tail -1 gpu.log)"; exit 77 ;;
    *) echo "FAIL DVL_REQUIRE_CUDA is set: $(tail -1 gpu.log)"; exit 1 ;;
    esac
fi
grep "device cuda" gpu.log | sed 's/^/   /'
if [ $rc -eq 0 ] && "$TRAIN" --config s2.json --set train.out=cpu $EV >cpu.log 2>&1 && py "$ST
lc, lg = losses('cpu'), losses('gpu')
assert len(lc) == len(lg) == 8, (len(lc), len(lg))
worst = 0.0
for i, (a, b) in enumerate(zip(lc, lg)):
    e = abs(a - b) / abs(a)
    print('   step %d: cpu %.7f cuda %.7f rel %.2e' % (i + 1, a, b, e))
    tol = 1e-5 if i == 0 else 1e-3
    assert e <= tol, 'step %d: rel %.3g > %g' % (i + 1, e, tol)
assert sum(lg[-3:]) < 0.9 * sum(lg[:3]), 'GPU loss did not fall: %s' % lg
"; then
    ok stage2_cuda_loss_matches_cpu
else
    bad "stage2_cuda_loss_matches_cpu: rc $rc: $(tail -2 gpu.log) $(tail -1 cpu.log 2>/dev/null)"
fi
if py "
import json
ec, eg = ([json.loads(l) for l in open(d + '/eval.jsonl')] for d in ('cpu', 'gpu'))
assert [r['step'] for r in ec] == [r['step'] for r in eg] == [0, 4, 8], (ec, eg)
for a, b in zip(ec, eg):
    e = abs(a['eval_loss'] - b['eval_loss']) / abs(a['eval_loss'])
    print('   eval at step %d: cpu %.7f cuda %.7f rel %.2e' % (a['step'], a['eval_loss'], b['eval_loss'], e))
    assert e <= (1e-5 if a['step'] == 0 else 1e-3), e
"; then
    ok eval_cuda_matches_cpu
else
    bad "eval_cuda_matches_cpu: $(grep 'eval loss' gpu.log | tail -1)"
fi

# ---- activation checkpointing on the GPU (the device arena rewound around
# each recomputed layer): the same weights as the plain GPU run, bit for bit
# (that run also evaluated on the held-out set, this one does not)
if "$TRAIN" --config s2.json --set train.device=cuda --set train.out=gpu_ck \
    --set train.checkpoint_layers=true >gpu_ck.log 2>&1 &&
    cmp -s gpu/final/model.safetensors gpu_ck/final/model.safetensors; then
    ok stage2_cuda_checkpoint_layers_bit_identical
else
    bad "stage2_cuda_checkpoint_layers_bit_identical: $(tail -2 gpu_ck.log)"
fi

# ---- train.precision: bf16 and TF32 products follow the f32 run within
# their rounding (bf16 operands: ~4e-3 relative a product; tolerance 5e-2 on
# the loss over 8 steps, TF32 1e-2) and the header names the mode, and the
# peak the MFU is measured against (a cuBLAS GEMM in that arithmetic)
for prec in bf16 tf32; do
    if "$TRAIN" --config s2.json --set train.device=cuda --set train.precision=$prec \
        --set log.mfu=true --set train.out=gpu_$prec >gpu_$prec.log 2>&1 &&
        grep -q "device cuda.*$( [ $prec = bf16 ] && echo 'bf16 (f32 accumulation)' || echo TF32) products" \
            gpu_$prec.log &&
        grep "MFU against" gpu_$prec.log | sed 's/^/   /' &&
        grep -q "cuBLAS $( [ $prec = bf16 ] && echo bf16 || echo TF32) GEMM of 4096^3" gpu_$prec.log &&
        py "$ST
lg, lp = losses('gpu'), losses('gpu_$prec')
tol = 5e-2 if '$prec' == 'bf16' else 1e-2
for i, (a, b) in enumerate(zip(lg, lp)):
    e = abs(a - b) / abs(a)
    print('   step %d: f32 %.7f $prec %.7f rel %.2e' % (i + 1, a, b, e))
    assert e <= tol, 'step %d: rel %.3g > %g' % (i + 1, e, tol)
assert sum(lp[-3:]) < 0.9 * sum(lp[:3]), 'loss did not fall: %s' % lp
"; then
        ok "stage2_cuda_${prec}_follows_f32"
    else
        bad "stage2_cuda_${prec}_follows_f32: $(tail -2 gpu_$prec.log)"
    fi
done

# ---- train.bf16_activations false: bf16 products on f32 activations (the
# MLP as three ops) follow the f32 run as closely, and differ from the
# default bf16 run, whose MLP keeps its hidden activations in bf16 (the
# switch reaches the op); the header says which.
if "$TRAIN" --config s2.json --set train.device=cuda --set train.precision=bf16 \
    --set train.bf16_activations=false --set train.out=gpu_bf16f >gpu_bf16f.log 2>&1 &&
    grep -q "bf16 MLP activations" gpu_bf16.log && ! grep -q "bf16 MLP activations" gpu_bf16f.log &&
    ! cmp -s gpu_bf16/final/model.safetensors gpu_bf16f/final/model.safetensors &&
    py "$ST
lg, lf, lb = losses('gpu'), losses('gpu_bf16f'), losses('gpu_bf16')
print('   f32 activations: %s; bf16: %s' % (lf, lb))
assert len(lf) == len(lg) == 8
assert all(abs(a - b) <= 5e-2 * abs(a) for a, b in zip(lg, lf)), (lg, lf)
"; then
    ok stage2_cuda_bf16_f32_activations_follows_f32
else
    bad "stage2_cuda_bf16_f32_activations_follows_f32: $(tail -2 gpu_bf16f.log)"
fi

# ---- train.attention_precision tf32 under bf16 products: the header says
# so, the run follows the f32 one as closely, and its weights differ from
# the all-bf16 run's (the key reaches the attention op).
if "$TRAIN" --config s2.json --set train.device=cuda --set train.precision=bf16 \
    --set train.attention_precision=tf32 --set train.out=gpu_bf16a >gpu_bf16a.log 2>&1 &&
    grep -q "bf16 (f32 accumulation) products, attention's in TF32" gpu_bf16a.log &&
    ! grep -q "attention's in" gpu_bf16.log &&
    ! cmp -s gpu_bf16/final/model.safetensors gpu_bf16a/final/model.safetensors &&
    py "$ST
lg, la = losses('gpu'), losses('gpu_bf16a')
print('   bf16 products, TF32 attention: %s' % la)
assert len(la) == len(lg) == 8
assert all(abs(a - b) <= 5e-2 * abs(a) for a, b in zip(lg, la)), (lg, la)
"; then
    ok stage2_cuda_bf16_tf32_attention_follows_f32
else
    bad "stage2_cuda_bf16_tf32_attention_follows_f32: $(tail -2 gpu_bf16a.log)"
fi

# ---- train.bf16_weight_copies: stage 1 in bf16 (the LM and the tower
# frozen) with the frozen weights' bf16 copies (the default) and without
# them: the same losses and final weights, bit for bit (a copy is what each
# product would round); stage 2 in bf16 with copies of every weight, the
# trainable ones made again after each step, and without: the same too.
if "$TRAIN" --config s1.json --set train.out=s1c >s1c.log 2>&1 &&
    grep "bf16 copies of the frozen weights" s1c.log | sed 's/^/   /' &&
    "$TRAIN" --config s1.json --set train.out=s1n --set train.bf16_weight_copies=none \
        >s1n.log 2>&1 && ! grep -q "bf16 copies" s1n.log &&
    cmp -s s1c/final/model.safetensors s1n/final/model.safetensors &&
    py "$ST
a, b = losses('s1c'), losses('s1n')
print('   stage 1 bf16 losses with copies %s, without %s' % (a, b))
assert len(a) == 4 and a == b
"; then
    ok stage1_cuda_bf16_frozen_copies_bit_identical
else
    bad "stage1_cuda_bf16_frozen_copies_bit_identical: $(tail -2 s1c.log) $(tail -1 s1n.log)"
fi
if "$TRAIN" --config s2.json --set train.device=cuda --set train.precision=bf16 \
    --set train.bf16_weight_copies=all --set train.out=gpu_bf16all >gpu_bf16all.log 2>&1 &&
    grep "bf16 copies of the trainable and frozen weights" gpu_bf16all.log | sed 's/^/   /' &&
    "$TRAIN" --config s2.json --set train.device=cuda --set train.precision=bf16 \
        --set train.bf16_weight_copies=none --set train.out=gpu_bf16none >gpu_bf16none.log 2>&1 &&
    cmp -s gpu_bf16all/final/model.safetensors gpu_bf16none/final/model.safetensors &&
    cmp -s gpu_bf16all/final/model.safetensors gpu_bf16/final/model.safetensors; then
    ok stage2_cuda_bf16_all_copies_bit_identical
else
    bad "stage2_cuda_bf16_all_copies_bit_identical: $(tail -2 gpu_bf16all.log) $(tail -1 gpu_bf16none.log)"
fi

# ---- exact resume on the GPU, from the checkpoint at step 4
if "$TRAIN" --resume gpu/ckpt/step-000004 --set train.out=gpu_r >gpu_r.log 2>&1 &&
    grep -q "device cuda" gpu_r.log &&
    cmp -s gpu/final/model.safetensors gpu_r/final/model.safetensors &&
    cmp -s gpu/ckpt/step-000008/optimizer.safetensors gpu_r/ckpt/step-000008/optimizer.safetensors &&
    cmp -s gpu/ckpt/step-000008/model.safetensors gpu_r/ckpt/step-000008/model.safetensors; then
    ok cuda_resume_bit_identical
else
    bad "cuda_resume_bit_identical: $(tail -2 gpu_r.log)"
fi
# The GPU's checkpoint is an ordinary one: the CPU resumes from it.
if "$TRAIN" --resume gpu/ckpt/step-000004 --set train.out=gpu_c --set train.device=cpu \
    --set train.max_steps=5 >gpu_c.log 2>&1 && [ -f gpu_c/final/model.safetensors ] &&
    ! grep -q "device cuda" gpu_c.log; then
    ok cuda_checkpoint_resumes_on_cpu
else
    bad "cuda_checkpoint_resumes_on_cpu: $(tail -2 gpu_c.log)"
fi

# ---- 2 ranks = 1 rank on the GPU(s)
gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU")
# Each rank takes GPU (local rank mod GPUs). NCCL refuses two ranks on one
# GPU of one host, so ranks sharing a GPU reduce through host memory
# (MPIRUN below), unless each rank has an NCCL_HOSTID of its own: NCCL then
# takes them for two hosts and joins them through its socket transport on
# the loopback interface (dist.c's check reads NCCL_HOSTID as NCCL does).
# NCCLRUN runs the NCCL path: plain on 2+ GPUs, so with one.
cat >nccl_rank.sh <<'EOF'
#!/bin/sh
NCCL_HOSTID=dvl-test-rank-${OMPI_COMM_WORLD_RANK:-0} exec "$@"
EOF
if [ "$gpus" -ge 2 ]; then
    path="all-reduced with NCCL"
    NCCLRUN="$MPIRUN -np 2"
else
    path="MPI through host memory"
    NCCLRUN="$MPIRUN -x NCCL_SOCKET_IFNAME=lo -x NCCL_IB_DISABLE=1 -x NCCL_DEBUG=WARN -np 2 sh nccl_rank.sh"
fi
# nccl_case NAME OUT ARGS...: 2 ranks on the NCCL path = the 1-rank run ar1.
# Without libnccl.so.2 (or in a build without NCCL: no nccl.h, or the
# emulated backend) it says so and skips, unless DVL_REQUIRE_NCCL=1.
nccl_case() {
    name=$1 out=$2
    shift 2
    $NCCLRUN "$TRAIN" --config ar.json --set train.out="$out" "$@" >"$out.log" 2>&1
    if grep -q "all-reduced with NCCL" "$out.log" && compare_runs ar1 "$out"; then
        ok "$name ($gpus GPU(s))"
    elif [ "${DVL_REQUIRE_NCCL:-0}" = 0 ] && grep -q "cannot load libnccl" "$out.log"; then
        echo "skip $name: no libnccl.so.2"
    elif [ "${DVL_REQUIRE_NCCL:-0}" = 0 ] && grep -q "built without NCCL" "$out.log"; then
        echo "skip $name: dvl built without NCCL"
    else
        bad "$name: $(grep -m1 "device cuda" "$out.log") $(tail -3 "$out.log")"
    fi
}
"$TRAIN" --config ar.json --set train.out=ar1 >ar1.log 2>&1
if ! command -v "$MPI" >/dev/null 2>&1; then
    bad "ar_cuda_1_rank_equals_2_ranks: no $MPI"
elif $MPIRUN -np 2 "$TRAIN" --config ar.json --set train.out=ar2 >ar2.log 2>&1 &&
    grep "device cuda" ar2.log | sed 's/^/   /' && grep -q "$path" ar2.log &&
    compare_runs ar1 ar2; then
    ok "ar_cuda_1_rank_equals_2_ranks ($gpus GPU(s))"
else
    bad "ar_cuda_1_rank_equals_2_ranks: $(tail -3 ar2.log) $(tail -1 ar1.log)"
fi
# The other path: host memory with a GPU per rank, NCCL on one GPU.
if [ "$gpus" -ge 2 ]; then
    if $MPIRUN -np 2 "$TRAIN" --config ar.json --set train.out=ar2h --set dist.nccl=false \
        >ar2h.log 2>&1 && grep -q "MPI through host memory" ar2h.log && compare_runs ar1 ar2h; then
        ok ar_cuda_2_ranks_host_reduce
    else
        bad "ar_cuda_2_ranks_host_reduce: $(tail -3 ar2h.log)"
    fi
else
    nccl_case ar_cuda_2_ranks_nccl_one_gpu ar2n
fi

# ---- ZeRO-1 on the GPU(s): 2 ranks = 1 rank on both paths; exact resume of
# its checkpoint on the NCCL path.
if $MPIRUN -np 2 "$TRAIN" --config ar.json --set train.out=arz --set dist.zero1=true >arz.log 2>&1 &&
    grep -q "ZeRO-1 on" arz.log && grep -q "$path" arz.log && compare_runs ar1 arz; then
    ok "ar_cuda_zero1_2_ranks_equals_1_rank ($gpus GPU(s))"
else
    bad "ar_cuda_zero1_2_ranks_equals_1_rank: $(tail -3 arz.log)"
fi
if [ "$gpus" -ge 2 ]; then
    if $MPIRUN -np 2 "$TRAIN" --config ar.json --set train.out=arzh --set dist.zero1=true \
        --set dist.nccl=false >arzh.log 2>&1 && grep -q "MPI through host memory" arzh.log &&
        compare_runs ar1 arzh; then
        ok ar_cuda_zero1_2_ranks_host_reduce
    else
        bad "ar_cuda_zero1_2_ranks_host_reduce: $(tail -3 arzh.log)"
    fi
else
    nccl_case ar_cuda_zero1_2_ranks_nccl_one_gpu arzn --set dist.zero1=true
fi
Z="--config ar.json --set dist.zero1=true --set ckpt.every=3 --set ckpt.keep_last=0"
if $NCCLRUN "$TRAIN" $Z --set train.out=arza >arza.log 2>&1 &&
    $NCCLRUN "$TRAIN" --resume arza/ckpt/step-000003 --set train.out=arzb >arzb.log 2>&1 &&
    grep -q "ZeRO-1 on" arzb.log &&
    cmp -s arza/final/model.safetensors arzb/final/model.safetensors &&
    cmp -s arza/ckpt/step-000006/optimizer.safetensors arzb/ckpt/step-000006/optimizer.safetensors
then
    ok "cuda_zero1_resume_bit_identical ($(grep -q "all-reduced with NCCL" arzb.log && echo NCCL ||
        echo "host memory"))"
else
    bad "cuda_zero1_resume_bit_identical: $(tail -2 arza.log) $(tail -2 arzb.log)"
fi

echo
if [ $fails -ne 0 ]; then
    echo "$fails failure(s)"
    exit 1
fi
echo "all passed"
