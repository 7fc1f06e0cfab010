#!/bin/sh
# dvl-train end to end on a tiny random VLM and a small synthetic dataset made
# here: loss falls in each stage; stage 1 leaves the LM and the vision tower
# bit-identical; a resumed run reaches bit-identical weights; 1 rank = 2 and
# 3 ranks at the same global batch (float tolerance; ar, stage 1 and stage
# 2), also with ZeRO-1 (dist.zero1; ar and stage 2), whose checkpoints resume
# bit-exactly and also without ZeRO-1 (and the other way); config errors
# name the key; train.device=cuda fails cleanly where it
# cannot run (GPU runs: train/test_train_cuda.sh).
#
#   test_train.sh DVL_TRAIN DVL_PREP DVL_CONVERT SOURCE_ROOT [cuda|cpu]
# (the last: whether dvl-train was built with CUDA; default cpu)
set -u
# Absolute paths: the script works in a temporary folder.
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
TRAIN=$(abs "$1")
PREP=$(abs "$2")
CONVERT=$(abs "$3")
SRC=$(cd "$4" && pwd)
BUILT=${5:-cpu}
T=$(mktemp -d /tmp/dvl-test-train-XXXXXX)
trap 'rm -rf "$T"' EXIT
MPIRUN="mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1"
. "$SRC/train/test_lib.sh"

# loss_falls RUN_DIR K [F]: mean loss of the last K steps below F (0.8) x the
# first K.
loss_falls() {
    py "
import json, sys
L = [json.loads(l)['loss'] for l in open('$1/metrics.jsonl')]
k = $2
a, b = sum(L[:k]) / k, sum(L[-k:]) / k
print('   first %d steps %.4f -> last %d steps %.4f' % (k, a, k, b))
sys.exit(0 if b < ${3:-0.8} * a else 1)"
}

cd "$T" || exit 1
"$PREP" synth --out syn --n 96 --heldout 0 --seed 3 --size 64 >/dev/null &&
    "$PREP" build --json syn/train.json --images syn --tokenizer syn/tokenizer --out ds \
        --image-size 28 --image-tokens 4 --shard-size 50 --threads 1 --quiet >/dev/null &&
    "$CONVERT" init --random "$SRC/configs/models/tiny-vlm.json" --seed 1 --out m0 >/dev/null ||
    { echo "FAIL setup"; exit 1; }

cat >ar.json <<'EOF'
{"model": {"path": "m0"}, "data": {"path": "ds"},
 "train": {"stage": "ar", "out": "ar", "epochs": 3, "micro_batch": 4, "global_batch": 8,
           "vision_trainable": true},
 "optim": {"lr": 3e-3, "vision_lr": 3e-3, "warmup_steps": 2}}
EOF
cat >s1.json <<'EOF'
{"model": {"path": "ar/final", "reset_connector": true, "connector_seed": 5}, "data": {"path": "ds"},
 "train": {"stage": "1", "out": "s1", "epochs": 4, "micro_batch": 4, "global_batch": 8},
 "optim": {"lr": 1e-2, "warmup_steps": 2}}
EOF
cat >s2.json <<'EOF'
{"model": {"path": "m0"}, "data": {"path": "ds"},
 "train": {"stage": "2", "out": "s2", "epochs": 3, "micro_batch": 4, "global_batch": 8,
           "vision_trainable": true},
 "optim": {"lr": 3e-3, "vision_lr": 6e-4, "warmup_steps": 2},
 "diffusion": {"block_size": 8, "mask_token_id": 412, "eos_token_id": 410}}
EOF

# ---- loss falls in each stage
if "$TRAIN" --config ar.json >ar.log 2>&1 && loss_falls ar 5; then ok ar_loss_falls; else bad "ar_loss_falls: $(tail -2 ar.log)"; fi
# Stage 1 trains only the connector of an already-trained LM: the loss moves
# less, and the data noise between steps is as large. Against the same run at
# lr 0 (the same batches), its last steps must be lower (on this tiny data the images explain little
# of the loss, so the margin is small).
if "$TRAIN" --config s1.json >s1.log 2>&1 &&
    "$TRAIN" --config s1.json --set optim.lr=0 --set train.out=s1zero >s1zero.log 2>&1 &&
    py "
import json, sys
def last(d, k=8): L = [json.loads(l)['loss'] for l in open(d + '/metrics.jsonl')]; return sum(L[-k:]) / k
a, b = last('s1zero'), last('s1')
print('   last 8 steps: lr 0 %.4f, trained %.4f' % (a, b))
sys.exit(0 if b < a else 1)"; then
    ok stage1_loss_falls
else
    bad "stage1_loss_falls: $(tail -2 s1.log)"
fi
if "$TRAIN" --config s2.json >s2.log 2>&1 && loss_falls s2 5; then ok stage2_loss_falls; else bad "stage2_loss_falls: $(tail -2 s2.log)"; fi
# After step 1: the memory line, its weights = 4 bytes x the parameter count
# of the start line, and an arena peak above zero.
nparam=$(sed -n 's/.*(\([0-9]*\) parameters,.*/\1/p' s2.log | head -1)
if line=$(grep -m1 "memory per rank: weights" s2.log) &&
    python3 - "$line" "$nparam" <<'PY'
import re, sys
line, n = sys.argv[1], int(sys.argv[2])
w = float(re.search(r"weights ([0-9.]+) MiB", line).group(1))
a = float(re.search(r"step arena peak ([0-9.]+) MiB", line).group(1))
sys.exit(0 if abs(w - 4 * n / 2**20) < 0.006 and a > 0 else 1)
PY
then
    ok memory_line
else
    bad "memory_line: $(grep -m1 'memory per rank' s2.log) / $nparam parameters"
fi
# log.mfu (default): the header names the measured peak, the progress lines
# an MFU, metrics.jsonl each step's model FLOPs (dvl_model_flops) and MFU in
# (0, 1]; with log.mfu false no peak is measured: no header line, no MFU
# in the progress lines, "mfu": null, the same model FLOPs. (One --set with
# three pairs: all three apply.)
if grep -q "MFU against the matrix-product peak measured now: [0-9.]* GFLOP/s over 1 rank" s2.log &&
    grep -q "^step .* | MFU [0-9.]*% |" s2.log &&
    "$TRAIN" --config s2.json --set train.out=s2nomfu train.max_steps=3 log.mfu=false \
        >s2nomfu.log 2>&1 && ! grep -q "MFU" s2nomfu.log &&
    py "
import json
a = [json.loads(l) for l in open('s2/metrics.jsonl')]
b = [json.loads(l) for l in open('s2nomfu/metrics.jsonl')]
print('   step 1: %.4g model FLOPs, MFU %.3g' % (a[0]['model_flops'], a[0]['mfu']))
assert all(r['model_flops'] > 0 and 0 < r['mfu'] <= 1 for r in a), a
assert len(b) == 3 and all(r['mfu'] is None for r in b), b
assert [r['model_flops'] for r in b] == [r['model_flops'] for r in a[:3]], (a[:3], b)
"; then
    ok mfu_logged
else
    bad "mfu_logged: $(grep -m1 MFU s2.log) $(tail -1 s2nomfu.log)"
fi
# The export names the mask token and block size it was trained with (what
# dvl-generate then uses by default); the AR export names neither.
if py "
import json, sys
c, a = json.load(open('s2/final/config.json')), json.load(open('ar/final/config.json'))
sys.exit(0 if c.get('mask_token_id') == 412 and c.get('diffusion_block_size') == 8
         and 'mask_token_id' not in a else 1)"; then
    ok stage2_export_names_mask_and_block
else
    bad stage2_export_names_mask_and_block
fi

# Stage 2 from a LLaDA language model on text-only data (the LM-only path).
py "
import json
d = json.load(open('syn/train.json'))
for r in d:
    r.pop('image', None)
    for t in r['conversations']: t['value'] = t['value'].replace('<image>', '').lstrip()
json.dump(d, open('text.json', 'w'))"
cat >ll.json <<'EOF'
{"model": {"path": "ll0"}, "data": {"path": "dstext"},
 "train": {"stage": "2", "out": "ll", "epochs": 3, "micro_batch": 4, "global_batch": 8},
 "optim": {"lr": 3e-3, "warmup_steps": 2},
 "diffusion": {"block_size": 8, "mask_token_id": 412, "eos_token_id": 410}}
EOF
if "$PREP" build --json text.json --images syn --tokenizer syn/tokenizer --out dstext --threads 1 \
    --quiet >/dev/null && "$CONVERT" init --random "$SRC/configs/models/tiny-llada.json" --seed 2 \
    --out ll0 >/dev/null && "$TRAIN" --config ll.json >ll.log 2>&1 && loss_falls ll 5; then
    ok llada_stage2_loss_falls
else
    bad "llada_stage2_loss_falls: $(tail -2 ll.log)"
fi

# The final model is a model directory other programs load.
if "$CONVERT" info --model s2/final >info.txt 2>&1 && grep -q "^parameters 143264" info.txt; then
    ok final_model_loads
else
    bad "final_model_loads: $(cat info.txt)"
fi

# ---- stage 1: only the connector moved
if py "$ST
a, b = load('ar/final/model.safetensors'), load('s1/final/model.safetensors')
assert a.keys() == b.keys()
conn = [k for k in a if k.startswith('model.mm_projector.')]
same = [k for k in a if not k.startswith('model.mm_projector.')]
assert conn and len(same) > 10
bad = [k for k in same if a[k] != b[k]]
moved = [k for k in conn if a[k] != b[k]]
print('   %d frozen tensors identical, %d of %d connector tensors changed' % (len(same) - len(bad), len(moved), len(conn)))
sys.exit(1 if bad or len(moved) != len(conn) else 0)"; then ok stage1_frozen_bit_identical; else bad stage1_frozen_bit_identical; fi

# ---- exact resume (stage 2: the noise path too): 8 steps straight vs 4 + 4
"$TRAIN" --config s2.json --set train.out=ra --set train.max_steps=8 --set ckpt.every=4 \
    --set ckpt.keep_last=0 >ra.log 2>&1 &&
    "$TRAIN" --resume ra/ckpt/step-000004 --set train.out=rb >rb.log 2>&1
if cmp -s ra/final/model.safetensors rb/final/model.safetensors &&
    cmp -s ra/ckpt/step-000008/optimizer.safetensors rb/ckpt/step-000008/optimizer.safetensors; then
    ok resume_bit_identical
else
    bad "resume_bit_identical: $(tail -1 rb.log)"
fi
# A resume takes every weight from the checkpoint (model.path's are not
# read: they would double the start-up of a large model), so a model folder
# with its config.json alone resumes to the same bits.
mkdir -p m_noweights && cp m0/config.json m_noweights/
if "$TRAIN" --resume ra/ckpt/step-000004 --set train.out=rnw model.path=m_noweights >rnw.log 2>&1 &&
    cmp -s ra/final/model.safetensors rnw/final/model.safetensors; then
    ok resume_reads_checkpoint_weights_only
else
    bad "resume_reads_checkpoint_weights_only: $(tail -1 rnw.log)"
fi
# At an epoch's end: 96 samples are 12 steps of 8 exactly, so the loader
# saved at step 12 stands at the start of epoch 1, and the resumed run goes
# on from there to the same bits.
"$TRAIN" --config s2.json --set train.out=re train.max_steps=14 ckpt.every=12 log.mfu=false \
    >re.log 2>&1 &&
    "$TRAIN" --resume re/ckpt/step-000012 --set train.out=rf >rf.log 2>&1
if grep -qF 'epoch\":1,\"position\":0' re/ckpt/step-000012/state.json; then
    epoch_start=yes
else
    epoch_start=no
fi
if [ $epoch_start = yes ] && cmp -s re/final/model.safetensors rf/final/model.safetensors; then
    ok resume_at_epoch_end_bit_identical
else
    bad "resume_at_epoch_end_bit_identical: loader at epoch start: $epoch_start; $(tail -1 rf.log)"
fi
# --resume latest finds the newest checkpoint under train.out/ckpt.
if "$TRAIN" --config s2.json --set train.out=ra --set train.max_steps=10 --resume latest >rl.log 2>&1 &&
    grep -q "resumed from ra/ckpt/step-000008 at step 8" rl.log; then
    ok resume_latest
else
    bad "resume_latest: $(tail -1 rl.log)"
fi

# ---- held-out evaluation (eval.path): the stage's loss over a second
# dataset at the current weights, without gradients.
"$PREP" synth --out sev --n 20 --heldout 0 --seed 9 --size 64 >/dev/null &&
    "$PREP" build --json sev/train.json --images sev --tokenizer sev/tokenizer --out ev \
        --image-size 28 --image-tokens 4 --shard-size 8 --threads 1 --quiet >/dev/null ||
    bad "eval setup: dvl-prep failed"
# At the start, every 12 steps and at the end; the training is the s2 run's
# to the bit (evaluation touches no weight, moment, loader or noise), and
# the held-out loss falls.
if "$TRAIN" --config s2.json --set train.out=ev1 eval.path=ev eval.every=12 eval.at_start=true \
    >ev1.log 2>&1 && cmp -s s2/final/model.safetensors ev1/final/model.safetensors &&
    grep -q "held-out evaluation of ev (20 samples) at the start, every 12 steps and at the end" ev1.log &&
    grep -q "step 36: eval loss [0-9.]* over 20 held-out samples" ev1.log &&
    py "
import json
def strict(c): raise ValueError(c)
e = [json.loads(l, parse_constant=strict) for l in open('ev1/eval.jsonl')]
print('   eval loss', ' '.join('%d: %.4f' % (r['step'], r['eval_loss']) for r in e))
assert [r['step'] for r in e] == [0, 12, 24, 36], e
assert all(r['samples'] == 20 and r['tokens'] > 0 for r in e), e
assert e[-1]['eval_loss'] < 0.8 * e[0]['eval_loss'], e
"; then
    ok eval_heldout
else
    bad "eval_heldout: $(tail -2 ev1.log)"
fi
# The held-out noise is a function of eval.seed and the sample alone: with
# the weights held still (lr 0) every evaluation is the same bits, and 2
# ranks at another eval.micro_batch give the same loss up to the order of
# the sums.
if "$TRAIN" --config s2.json --set train.out=ev0 eval.path=ev eval.every=1 eval.at_start=true \
    optim.lr=0 optim.vision_lr=0 train.max_steps=3 >ev0.log 2>&1 &&
    $MPIRUN -np 2 "$TRAIN" --config s2.json --set train.out=ev0r2 eval.path=ev eval.every=1 \
        eval.at_start=true eval.micro_batch=3 optim.lr=0 optim.vision_lr=0 train.max_steps=3 \
        >ev0r2.log 2>&1 &&
    py "
import json
a = [json.loads(l)['eval_loss'] for l in open('ev0/eval.jsonl')]
b = [json.loads(l)['eval_loss'] for l in open('ev0r2/eval.jsonl')]
print('   1 rank %r, 2 ranks %r' % (a[0], b[0]))
assert len(a) == len(b) == 4 and len(set(a)) == 1 and len(set(b)) == 1, (a, b)
assert abs(a[0] - b[0]) <= 1e-5 * abs(a[0]), (a, b)
"; then
    ok eval_fixed_noise_any_ranks
else
    bad "eval_fixed_noise_any_ranks: $(tail -1 ev0.log) $(tail -1 ev0r2.log)"
fi
# A resume evaluates where the straight run did, to the same bits.
"$TRAIN" --config s2.json --set train.out=evs train.max_steps=8 ckpt.every=4 eval.path=ev \
    eval.every=4 >evs.log 2>&1 &&
    "$TRAIN" --resume evs/ckpt/step-000004 --set train.out=evt >evt.log 2>&1
if py "
import json
a = [json.loads(l) for l in open('evs/eval.jsonl')]
b = [json.loads(l) for l in open('evt/eval.jsonl')]
assert [r['step'] for r in a] == [4, 8] and [r['step'] for r in b] == [8], (a, b)
assert a[1]['eval_loss'] == b[0]['eval_loss'], (a, b)
"; then
    ok eval_resume_same_bits
else
    bad "eval_resume_same_bits: $(tail -1 evs.log) $(tail -1 evt.log)"
fi
# A resume into the run's own folder from an earlier checkpoint (the run
# went on past it, then stopped mid-line): metrics.jsonl and eval.jsonl keep
# each step once, in order, with the straight run's losses.
"$TRAIN" --config s2.json --set train.out=rown train.max_steps=8 ckpt.every=4 ckpt.keep_last=0 \
    eval.path=ev eval.every=2 >rown.log 2>&1 && cp rown/metrics.jsonl rown_straight.jsonl &&
    printf '{"step": 9, "lo' >>rown/metrics.jsonl &&
    "$TRAIN" --resume rown/ckpt/step-000004 >rown2.log 2>&1
if py "
import json
m = [json.loads(l) for l in open('rown/metrics.jsonl')]
e = [json.loads(l) for l in open('rown/eval.jsonl')]
a = [json.loads(l) for l in open('rown_straight.jsonl')]
assert [r['step'] for r in m] == list(range(1, 9)), [r['step'] for r in m]
assert [r['step'] for r in e] == [2, 4, 6, 8], e
assert [r['loss'] for r in m] == [r['loss'] for r in a], (m, a)
"; then
    ok resume_trims_own_logs
else
    bad "resume_trims_own_logs: $(tail -1 rown2.log)"
fi

# ---- NaN/Inf steps: skipped and logged; more than optim.max_bad_steps in a
# row abort with the last checkpoint intact.
if "$TRAIN" --config ar.json --set train.out=nan1 --set train.max_steps=8 --set debug.nonfinite_from=4 \
    --set debug.nonfinite_steps=2 >nan1.log 2>&1 &&
    [ "$(grep -c '"skipped": true' nan1/metrics.jsonl)" -eq 2 ] &&
    grep -q '"step": 4, .*"skipped": true' nan1/metrics.jsonl &&
    grep -q "step 5: non-finite" nan1.log &&
    py "
import json
def strict(c): raise ValueError('not JSON: ' + c)
rows = [json.loads(l, parse_constant=strict) for l in open('nan1/metrics.jsonl')]
skipped = [r for r in rows if r['skipped']]
assert [r['step'] for r in skipped] == [4, 5], rows
assert all(r['grad_norm'] is None for r in skipped), skipped
assert all(isinstance(r['loss'], float) for r in rows if not r['skipped']), rows
"; then
    ok nonfinite_skipped
else
    bad "nonfinite_skipped: $(tail -2 nan1.log)"
fi
"$TRAIN" --config ar.json --set train.out=nan2 --set train.max_steps=20 --set ckpt.every=2 \
    --set debug.nonfinite_from=5 --set debug.nonfinite_steps=100 --set optim.max_bad_steps=3 >nan2.log 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -q "4 non-finite steps in a row" nan2.log &&
    [ "$(cat nan2/ckpt/latest)" = step-000006 ] && [ ! -d nan2/final ] &&
    "$TRAIN" --resume nan2/ckpt --set train.out=nan3 --set debug.nonfinite_from=-1 >nan3.log 2>&1; then
    ok nonfinite_abort_keeps_checkpoint
else
    bad "nonfinite_abort_keeps_checkpoint: rc $rc: $(tail -2 nan2.log)"
fi

# ---- 1 rank = 2 ranks = 3 ranks at global batch 12 (stages ar, 1 and 2;
# stage 2 draws each sample's noise from its index in the global batch, so
# its masks and t's are the same whatever the rank count)
# (ar and stage 2: 10 steps, across the epoch boundary at step 8 of 96 / 12.)
for stage in ar s1 s2; do
    steps=4
    [ $stage != s1 ] && steps=10
    S="--set train.micro_batch=2 --set train.global_batch=12 --set train.max_steps=$steps --set dist.check_every=1"
    "$TRAIN" --config $stage.json --set train.out=${stage}_n1 $S >n1.log 2>&1
    # Activation checkpointing (train.checkpoint_layers, LM and vision tower
    # layers): the same run, bit for bit; with 2 ranks (stage 2) too, where
    # the layers' gradient buckets start reducing as each checkpointed layer's
    # backward ends.
    if "$TRAIN" --config $stage.json --set train.out=${stage}_ck $S \
        --set train.checkpoint_layers=true >ck.log 2>&1 &&
        cmp -s ${stage}_n1/final/model.safetensors ${stage}_ck/final/model.safetensors; then
        ok "${stage}_checkpoint_layers_bit_identical"
    else
        bad "${stage}_checkpoint_layers_bit_identical: $(tail -2 ck.log)"
    fi
    # ZeRO-1 on one rank is off: the same run, bit for bit.
    if [ $stage = s2 ]; then
        if "$TRAIN" --config $stage.json --set train.out=${stage}_z1 $S --set dist.zero1=true \
            >z1.log 2>&1 && grep -q "ZeRO-1 off (one rank)" z1.log &&
            cmp -s ${stage}_n1/final/model.safetensors ${stage}_z1/final/model.safetensors; then
            ok "${stage}_zero1_1_rank_bit_identical"
        else
            bad "${stage}_zero1_1_rank_bit_identical: $(tail -2 z1.log)"
        fi
    fi
    for np in 2 3; do
        if $MPIRUN -np $np "$TRAIN" --config $stage.json --set train.out=${stage}_n$np $S >n$np.log 2>&1 &&
            compare_runs ${stage}_n1 ${stage}_n$np; then
            ok "${stage}_1_rank_equals_${np}_ranks"
        else
            bad "${stage}_1_rank_equals_${np}_ranks: $(tail -2 n$np.log)"
        fi
        if [ $stage = s2 ] && [ $np = 2 ]; then
            if $MPIRUN -np 2 "$TRAIN" --config $stage.json --set train.out=${stage}_ck2 $S \
                --set train.checkpoint_layers=true >ck2.log 2>&1 &&
                cmp -s ${stage}_n2/final/model.safetensors ${stage}_ck2/final/model.safetensors; then
                ok "${stage}_checkpoint_layers_2_ranks_bit_identical"
            else
                bad "${stage}_checkpoint_layers_2_ranks_bit_identical: $(tail -2 ck2.log)"
            fi
        fi
        # ZeRO-1: the same against the plain runs on 1 and on np ranks; each
        # rank holds the moments of 143264 / np elements (rounded up to 16).
        [ $stage = s1 ] && continue
        shard=71632
        [ $np = 3 ] && shard=47760
        if $MPIRUN -np $np "$TRAIN" --config $stage.json --set train.out=${stage}_z$np $S \
            --set dist.zero1=true >z$np.log 2>&1 &&
            grep -q "ZeRO-1 on: AdamW moments of $shard of 143264 trainable elements" z$np.log &&
            compare_runs ${stage}_n1 ${stage}_z$np && compare_runs ${stage}_n$np ${stage}_z$np; then
            ok "${stage}_zero1_${np}_ranks_equals_plain"
        else
            bad "${stage}_zero1_${np}_ranks_equals_plain: $(tail -2 z$np.log)"
        fi
    done
done

# ---- ZeRO-1 checkpoints (2 ranks, stage 2): the same format as without
# (optimizer.safetensors holds the whole moments, gathered on rank 0), exact
# resume (8 steps straight vs 4 + 4), and resumes across the switch: a ZeRO-1
# checkpoint without ZeRO-1 and a plain one with it (float tolerance against
# the straight runs; the global norm's sums run in another order).
# weights_close A B: final weights within 1e-5.
weights_close() {
    py "$ST
a, b = load('$1/final/model.safetensors'), load('$2/final/model.safetensors')
assert a.keys() == b.keys()
m = 0.0
for k in a:
    fa = struct.unpack('<%df' % (len(a[k]) // 4), a[k]); fb = struct.unpack('<%df' % (len(b[k]) // 4), b[k])
    m = max(m, max(abs(x - y) for x, y in zip(fa, fb)))
print('   $1 vs $2: max weight difference %.3g' % m)
sys.exit(0 if m <= 1e-5 else 1)"
}
Z="--config s2.json --set train.max_steps=8 --set ckpt.every=4 --set ckpt.keep_last=0"
$MPIRUN -np 2 "$TRAIN" $Z --set train.out=zp >zp.log 2>&1
$MPIRUN -np 2 "$TRAIN" $Z --set train.out=za --set dist.zero1=true >za.log 2>&1 &&
    $MPIRUN -np 2 "$TRAIN" --resume za/ckpt/step-000004 --set train.out=zb >zb.log 2>&1
if grep -q "ZeRO-1 on" zb.log && cmp -s za/final/model.safetensors zb/final/model.safetensors &&
    cmp -s za/ckpt/step-000008/optimizer.safetensors zb/ckpt/step-000008/optimizer.safetensors; then
    ok zero1_resume_bit_identical
else
    bad "zero1_resume_bit_identical: $(tail -1 zb.log)"
fi
if py "$ST
a = load('zp/ckpt/step-000008/optimizer.safetensors')
b = load('za/ckpt/step-000008/optimizer.safetensors')
assert a.keys() == b.keys() and all(len(a[k]) == len(b[k]) for k in a), 'format'
m = 0.0
for k in a:
    fa = struct.unpack('<%df' % (len(a[k]) // 4), a[k]); fb = struct.unpack('<%df' % (len(b[k]) // 4), b[k])
    m = max(m, max(abs(x - y) for x, y in zip(fa, fb)))
print('   %d moment tensors, max difference from the plain run %.3g' % (len(a), m))
sys.exit(0 if m <= 1e-5 else 1)"; then
    ok zero1_checkpoint_format
else
    bad zero1_checkpoint_format
fi
if $MPIRUN -np 2 "$TRAIN" --resume za/ckpt/step-000004 --set train.out=zc \
    --set dist.zero1=false >zc.log 2>&1 && grep -q "ZeRO-1 off" zc.log && weights_close zp zc; then
    ok zero1_checkpoint_resumes_without_zero1
else
    bad "zero1_checkpoint_resumes_without_zero1: $(tail -1 zc.log)"
fi
if $MPIRUN -np 2 "$TRAIN" --resume zp/ckpt/step-000004 --set train.out=zd \
    --set dist.zero1=true >zd.log 2>&1 && grep -q "ZeRO-1 on" zd.log && weights_close zp zd; then
    ok plain_checkpoint_resumes_with_zero1
else
    bad "plain_checkpoint_resumes_with_zero1: $(tail -1 zd.log)"
fi
# A NaN in rank 0's shard only (element 0 of the gradient): every rank skips
# the step, so the weights stay identical (checked every step).
if $MPIRUN -np 2 "$TRAIN" --config ar.json --set train.out=znan --set train.max_steps=6 \
    --set dist.zero1=true --set dist.check_every=1 --set debug.nonfinite_from=3 \
    --set debug.nonfinite_steps=2 >znan.log 2>&1 &&
    [ "$(grep -c '"skipped": true' znan/metrics.jsonl)" -eq 2 ]; then
    ok zero1_nonfinite_skipped_on_every_rank
else
    bad "zero1_nonfinite_skipped_on_every_rank: $(tail -2 znan.log)"
fi

# scripts/plot-metrics draws the runs (one with skipped steps, one with
# held-out points) and names their figures.
if python3 "$SRC/scripts/plot-metrics" ev1 nan1 -o plot.svg >plot.txt 2>&1 &&
    grep -q "^ev1: 36 steps, .*; held-out loss [0-9.]* at step 0 -> [0-9.]* at step 36" plot.txt &&
    grep -q "^nan1: 6 steps" plot.txt && [ "$(grep -c '<circle' plot.svg)" -eq 4 ]; then
    ok plot_metrics
else
    bad "plot_metrics: $(cat plot.txt)"
fi

# ---- config errors: exit 1, one line naming the key
reject() {
    name=$1
    want=$2
    shift 2
    "$TRAIN" "$@" >out.txt 2>err.txt
    rc=$?
    if [ $rc -ne 0 ] && [ "$(wc -l <err.txt)" -eq 1 ] && grep -qF -- "$want" err.txt; then
        ok "config_$name"
    else
        bad "config_$name: rc $rc: $(cat err.txt)"
    fi
}
echo '{"model": {"path": "m0"}, "data": {"path": "ds"}, "optim": {"lrr": 1}}' >unknown.json
echo '{"model": {"path": "m0"}, "data": {"path": "ds"}, "optim": {"lr": "fast"}}' >type.json
echo '{"model": {"path": "m0"}}' >missing.json
reject unknown_key optim.lrr --config unknown.json
reject wrong_type optim.lr --config type.json
reject missing_required data.path --config missing.json
reject out_of_range diffusion.block_size --config s2.json --set diffusion.block_size=0
reject bad_enum train.stage --config s2.json --stage 3
reject unknown_set train.epoch --config s2.json --set train.epoch=2
reject batch_multiple train.global_batch --config s2.json --set train.global_batch=6
reject eps_order diffusion.eps_min --config s2.json --set diffusion.eps_min=0.5 --set diffusion.eps_max=0.1
reject mask_id diffusion.mask_token_id --config s2.json --set diffusion.mask_token_id=151671
reject no_config "--config is required"
reject resume_missing "nowhere" --resume nowhere
# A checkpoint resumes only where its step left the data: another global
# batch, or a state.json whose step was edited, is one line, not a run that
# silently reads other samples.
reject resume_other_batch "position 32 (rank 0), but after step 4 it would be at epoch 0 position 64 (16 samples per rank a step" \
    --resume ra/ckpt/step-000004 --set train.out=rc1 train.global_batch=16
cp -r ra/ckpt/step-000004 rstep
sed 's/"step":[[:space:]]*4,/"step": 5,/' ra/ckpt/step-000004/state.json >rstep/state.json
reject resume_step_edited "rstep: its data loader is at epoch 0 position 32 (rank 0), but after step 5 it would be at epoch 0 position 40" \
    --resume rstep --set train.out=rc2
# A loader position no integer holds (1e300) is an error, not a conversion
# out of range (undefined in C; the sanitizer build checks float-cast-overflow).
cp -r ra/ckpt/step-000004 rpos
sed 's/\\"position\\":[0-9]*/\\"position\\":1e300/' ra/ckpt/step-000004/state.json >rpos/state.json
reject resume_position_huge "loader state rank 0: position is not an integer in [0, 9007199254740992]" \
    --resume rpos --set train.out=rc4
# A resume checks the shards' sizes (not their checksums: a pass over the
# data): a shard gone since is one line at the start, not an error hours in.
cp -r ds ds_gone && rm ds_gone/shard-00001.h5
reject resume_missing_shard "ds_gone/shard-00001.h5: No such file or directory (a shard of the manifest)" \
    --resume ra/ckpt/step-000004 --set train.out=rc3 data.path="$PWD/ds_gone"
# A dataset built with another model's tokenizer (here Qwen's 151669 ids for
# the tiny model's 416 rows): one line before any step.
"$PREP" build --json syn/train.json --images syn --tokenizer "$SRC/tests/data/qwen-tokenizer" \
    --out ds_qwen --image-size 28 --image-tokens 4 --shard-size 50 --threads 1 --quiet >/dev/null ||
    bad "config_tokenizer_past_embedding: dvl-prep build with the Qwen tokenizer failed"
reject tokenizer_past_embedding "ds_qwen was built with a tokenizer of 151669 ids, the embedding of m0 has 416 rows" \
    --config s2.json --set train.out=o_tok data.path=ds_qwen
# The data is checked against the model's config before the weights are
# read: a model folder without its weights gives the same line.
reject data_checked_before_weights "ds_qwen was built with a tokenizer of 151669 ids, the embedding of m_noweights has 416 rows" \
    --config s2.json --set train.out=o_tok2 data.path=ds_qwen model.path=m_noweights
# The held-out set: checked like data.path before any step, one line naming
# eval.path, nothing written.
reject eval_without_path "eval.every: set, but eval.path (the held-out dataset) is not" \
    --config s2.json --set train.out=o_ev1 eval.every=5
reject eval_missing "eval.path: nowhere/manifest.json: cannot open" \
    --config s2.json --set train.out=o_ev2 eval.path=nowhere
reject eval_tokenizer_past_embedding "eval.path: ds_qwen was built with a tokenizer of 151669 ids" \
    --config s2.json --set train.out=o_ev3 eval.path=ds_qwen
cp -r ev ev_cut && head -c 1000 ev/shard-00001.h5 >ev_cut/shard-00001.h5
reject eval_shard_cut "eval.path: ev_cut/shard-00001.h5: checksum mismatch: 1000 bytes" --config s2.json --set train.out=o_ev4 eval.path=ev_cut
if [ -e o_ev1 ] || [ -e o_ev2 ] || [ -e o_ev3 ] || [ -e o_ev4 ]; then
    bad "eval_errors_write_nothing: $(ls -d o_ev*)"
else
    ok eval_errors_write_nothing
fi
reject bad_device train.device --config s2.json --set train.device=gpu
reject precision_on_cpu "train.precision: bf16 needs train.device cuda" --config s2.json --set train.precision=bf16
reject bad_precision train.precision --config s2.json --set train.precision=fp8
reject attention_precision_on_cpu "train.attention_precision: tf32 needs train.device cuda" --config s2.json --set train.attention_precision=tf32
reject bad_attention_precision train.attention_precision --config s2.json --set train.attention_precision=fp16
reject zero1_type dist.zero1 --config s2.json --set dist.zero1=maybe
# the command line itself: one line too (the keys are --help's, on stdout)
if "$TRAIN" --help >help.txt 2>help.err && [ ! -s help.err ] &&
    grep -q "^usage: \[mpirun -np N\] dvl-train" help.txt &&
    grep -q "^  train.global_batch  *int" help.txt && grep -q "^  diffusion.block_size " help.txt; then
    ok help_lists_keys
else
    bad "help_lists_keys: $(head -2 help.txt) $(cat help.err)"
fi
reject unknown_option "unknown option --frob (dvl-train --help" --config s2.json --frob 1
reject option_without_value "--resume needs a value" --config s2.json --resume
reject set_without_pair "--set needs a value (key=value)" --config s2.json --set --stage 2
# one --set takes several pairs, up to the next option: the later pair is
# checked too, so it is read
reject set_second_pair "--set train.epoch=2: unknown key" --config s2.json --set train.max_steps=1 train.epoch=2
reject set_pairs_then_option "--set diffusion.block_size=0: 0 is out of range" --config s2.json \
    --set train.max_steps=1 train.out=o_x --stage 2 --set diffusion.block_size=0

# ---- train.device=cuda where it cannot run: one line naming the key and the
# reason, exit 1, nothing written. (With a GPU present it just runs.)
"$TRAIN" --config s2.json --set train.device=cuda --set train.out=cu0 --set train.max_steps=2 \
    >out.txt 2>err.txt
rc=$?
if [ $BUILT = cuda ]; then want="no CUDA device is usable"; else want="built without CUDA"; fi
if [ $rc -eq 0 ] && [ $BUILT = cuda ] && [ -f cu0/final/model.safetensors ]; then
    ok "device_cuda_unavailable (skipped: a GPU is present, the run worked)"
elif [ $rc -eq 1 ] && [ "$(wc -l <err.txt)" -eq 1 ] && grep -qF "train.device: cuda" err.txt &&
    grep -qF "$want" err.txt && [ ! -e cu0 ]; then
    ok device_cuda_unavailable
else
    bad "device_cuda_unavailable ($BUILT build): rc $rc: $(cat err.txt)"
fi

echo
if [ $fails -ne 0 ]; then
    echo "$fails failure(s)"
    exit 1
fi
echo "all passed"
