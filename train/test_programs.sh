#!/bin/sh
# dvl-convert and dvl-generate end to end on the reference fixtures, and
# their error paths: every bad input gives exactly one line on stderr and a
# non-zero exit status.
#
#   test_programs.sh DVL_CONVERT DVL_GENERATE TESTS_DATA_DIR
set -u
CONVERT=$1
GENERATE=$2
DATA=$3
REF=$DATA/ref
T=$(mktemp -d /tmp/dvl-test-programs-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0

ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }

# run NAME CMD...: must succeed.
run() {
    name=$1
    shift
    if "$@" >"$T/out" 2>"$T/err"; then ok "$name"; else bad "$name: $(cat "$T/err")"; fi
}

# reject NAME WANT CMD...: must fail with one stderr line containing WANT.
reject() {
    name=$1
    want=$2
    shift 2
    "$@" >"$T/out" 2>"$T/err"
    rc=$?
    lines=$(wc -l <"$T/err")
    if [ $rc -ne 0 ] && [ "$lines" -eq 1 ] && grep -qF -- "$want" "$T/err"; then
        ok "$name"
    else
        bad "$name: rc $rc, $lines lines: $(cat "$T/err")"
    fi
}

# logits_rel WHAT LO HI A B [A B ...]: for each pair of .npy logits files
# (f32, 128-byte header), the largest difference relative to A's largest
# magnitude, printed; fails unless LO < it <= HI (LO 0: only <= HI).
logits_rel() {
    python3 - "$@" <<'EOF'
import struct, sys
def npy(p):
    b = open(p, 'rb').read()
    return struct.unpack('<%df' % ((len(b) - 128) // 4), b[128:])
what, lo, hi, files = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
for a, b in zip(files[::2], files[1::2]):
    x, y = npy(a), npy(b)
    assert len(x) == len(y) > 0
    e = max(abs(p - q) for p, q in zip(x, y)) / max(abs(p) for p in x)
    print('   %s: %s logits rel %.2e' % (b.split('/')[-1], what, e))
    assert (lo == 0 or lo < e) and e <= hi, e
EOF
}

# Token ids of the fixtures (row 0 of input_ids): qwen2_tied, and the vlm
# prompt with its one image placeholder (id 5) at position 3.
echo '[17, 3, 99, 41, 6, 120, 7, 64, 0, 127, 33]' >"$T/ids.json"
echo '{"text": "x", "ids": [30, 85, 21, 5, 81, 99, 56, 105, 70, 29]}' >"$T/vlm_ids.json"

# --lm re-save: f32 is lossless, so the logits are byte-identical.
run convert_lm "$CONVERT" init --lm "$REF/qwen2_tied" --out "$T/q"
run score_ref "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/ids.json" --logits-out "$T/a.npy"
run score_copy "$GENERATE" --score --model "$T/q" --ids "$T/ids.json" --logits-out "$T/b.npy"
if cmp -s "$T/a.npy" "$T/b.npy"; then ok lm_copy_same_logits; else bad lm_copy_same_logits; fi
# NPY header: magic, version 1.0, the dict padded to 128 bytes, then the
# 11 x 128 f32 logits.
if head -c 128 "$T/a.npy" | grep -aq "{'descr': '<f4', 'fortran_order': False, 'shape': (11, 128), }" &&
    [ "$(head -c 8 "$T/a.npy" | od -An -c | tr -d ' ')" = '223NUMPY001\0' ] &&
    [ "$(wc -c <"$T/a.npy")" -eq $((128 + 11 * 128 * 4)) ]; then
    ok npy_header
else
    bad npy_header
fi

# VLM from parts: the LM of qwen2_tied, the siglip tower, a fresh connector.
# On text alone its logits are the LM's, byte for byte.
run convert_vlm "$CONVERT" init --lm "$REF/qwen2_tied" --vision "$REF/siglip" \
    --connector-seed 3 --image-token-id 5 --out "$T/v"
run info_vlm "$CONVERT" info --model "$T/v"
grep -q "vision hidden 32 layers 2 of 3" "$T/out" && ok info_vlm_layers || bad info_vlm_layers
run score_vlm_text "$GENERATE" --score --model "$T/v" --ids "$T/ids.json" --logits-out "$T/c.npy"
# (ids.json has no 5: no image rows)
if cmp -s "$T/a.npy" "$T/c.npy"; then ok vlm_text_same_logits; else bad vlm_text_same_logits; fi
run score_vlm_image "$GENERATE" --score --model "$T/v" --ids "$T/vlm_ids.json" \
    --image "$DATA/images/gray.jpg" --logits-out "$T/d.npy"
# 10 ids with one placeholder -> 25 positions.
head -c 128 "$T/d.npy" | grep -aq "'shape': (25, 128)" && ok vlm_expanded_rows || bad vlm_expanded_rows
# --score --device: cpu is the default (the same bytes); cuda, where a GPU
# answers, gives the CPU's logits within f32 rounding (LM and VLM with an
# image), else one line naming --device.
run score_device_cpu "$GENERATE" --score --model "$T/v" --ids "$T/vlm_ids.json" \
    --image "$DATA/images/gray.jpg" --logits-out "$T/d_cpu.npy" --device cpu
cmp -s "$T/d.npy" "$T/d_cpu.npy" && ok score_device_cpu_is_default || bad score_device_cpu_is_default
reject score_device_bad "--device must be cpu or cuda (got tpu)" "$GENERATE" --score \
    --model "$REF/qwen2_tied" --ids "$T/ids.json" --logits-out "$T/x.npy" --device tpu
# --precision bf16 is for the GPU: on the CPU one line naming it, nothing written.
reject score_precision_bf16_on_cpu "--precision bf16 needs --device cuda" "$GENERATE" --score \
    --model "$REF/qwen2_tied" --ids "$T/ids.json" --logits-out "$T/x.npy" --precision bf16
[ ! -e "$T/x.npy" ] && ok score_precision_bf16_on_cpu_writes_nothing ||
    bad score_precision_bf16_on_cpu_writes_nothing
"$GENERATE" --score --model "$T/v" --ids "$T/vlm_ids.json" --image "$DATA/images/gray.jpg" \
    --logits-out "$T/d_cuda.npy" --device cuda >"$T/out" 2>"$T/err"
rc=$?
if [ $rc -eq 0 ]; then
    if "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/ids.json" --logits-out "$T/a_cuda.npy" \
        --device cuda >"$T/out" 2>"$T/err" &&
        logits_rel "cuda vs cpu" 0 1e-4 "$T/a.npy" "$T/a_cuda.npy" "$T/d.npy" "$T/d_cuda.npy"
    then ok score_device_cuda_matches_cpu; else bad "score_device_cuda_matches_cpu: $(cat "$T/err")"; fi
    # --precision bf16: bf16 products on the weights' bf16 copies; the
    # logits within bf16 rounding of the CPU's (5e-2 of the largest, through
    # two layers and, for the VLM, the tower) and not f32's (> 1e-6).
    if "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/ids.json" --device cuda \
        --precision bf16 --logits-out "$T/a_bf16.npy" >"$T/out" 2>"$T/err" &&
        "$GENERATE" --score --model "$T/v" --ids "$T/vlm_ids.json" --image "$DATA/images/gray.jpg" \
            --device cuda --precision bf16 --logits-out "$T/d_bf16.npy" >"$T/out" 2>"$T/err" &&
        logits_rel "cuda bf16 vs cpu f32" 1e-6 5e-2 "$T/a.npy" "$T/a_bf16.npy" "$T/d.npy" "$T/d_bf16.npy"
    then ok score_device_cuda_bf16_close_to_cpu; else bad "score_device_cuda_bf16_close_to_cpu: $(cat "$T/err")"; fi
    # --attention: naming f32 products' own is the default, to the byte; bf16
    # products on the TF32 attention kernels and f32 products on the bf16
    # ones stay within bf16 rounding of the CPU and differ from both plain
    # runs (the attention kernels did change).
    if "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/ids.json" --device cuda \
        --attention f32 --logits-out "$T/a_att_f32.npy" >"$T/out" 2>"$T/err" &&
        cmp -s "$T/a_cuda.npy" "$T/a_att_f32.npy"
    then ok score_device_cuda_attention_f32_is_default
    else bad "score_device_cuda_attention_f32_is_default: $(cat "$T/err")"; fi
    if "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/ids.json" --device cuda \
        --precision bf16 --attention tf32 --logits-out "$T/a_bf16_tf32.npy" >"$T/out" 2>"$T/err" &&
        "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/ids.json" --device cuda \
            --attention bf16 --logits-out "$T/a_f32_bf16.npy" >"$T/out" 2>"$T/err" &&
        logits_rel "cuda mixed attention vs cpu f32" 1e-6 5e-2 "$T/a.npy" "$T/a_bf16_tf32.npy" \
            "$T/a.npy" "$T/a_f32_bf16.npy" &&
        logits_rel "vs the plain runs" 0 1 "$T/a_bf16.npy" "$T/a_bf16_tf32.npy" \
            "$T/a_cuda.npy" "$T/a_f32_bf16.npy" &&
        ! cmp -s "$T/a_bf16.npy" "$T/a_bf16_tf32.npy" && ! cmp -s "$T/a_cuda.npy" "$T/a_f32_bf16.npy"
    then ok score_device_cuda_attention_override
    else bad "score_device_cuda_attention_override: $(cat "$T/err")"; fi
elif [ "$(wc -l <"$T/err")" -eq 1 ] && grep -qF -- "--device cuda" "$T/err" && [ ! -e "$T/d_cuda.npy" ]; then
    ok score_device_cuda_unavailable
else
    bad "score_device_cuda_unavailable: rc $rc: $(cat "$T/err")"
fi

# Without --image-token-id the slot id is dvl-prep build's with the LM's own
# tokenizer (this one has no <image>: its vocabulary size, counted here from
# tokenizer.json), -200 with no tokenizer.json in the LM directory.
mkdir -p "$T/lmtok"
cp "$REF/qwen2_tied/config.json" "$REF/qwen2_tied/model.safetensors" "$DATA/qwen-tokenizer/tokenizer.json" \
    "$DATA/qwen-tokenizer/tokenizer_config.json" "$T/lmtok/"
run convert_vlm_tok "$CONVERT" init --lm "$T/lmtok" --vision "$REF/siglip" --out "$T/vt"
run convert_vlm_notok "$CONVERT" init --lm "$REF/qwen2_tied" --vision "$REF/siglip" --out "$T/vn"
want=$(python3 -c "
import json
t = json.load(open('$T/lmtok/tokenizer.json'))
ids = list(t['model']['vocab'].values()) + [a['id'] for a in t['added_tokens']]
print(max(ids) + 1)")
if grep -q "\"image_token_index\":[[:space:]]*$want," "$T/vt/config.json" &&
    grep -q '"image_token_index":[[:space:]]*-200' "$T/vn/config.json"; then
    ok convert_image_id_default
else
    bad convert_image_id_default
fi

# --random is deterministic in the seed; bf16 halves the file.
run random_a "$CONVERT" init --random "$REF/qwen2_untied/config.json" --seed 4 --dtype bf16 --out "$T/r1"
run random_b "$CONVERT" init --random "$REF/qwen2_untied/config.json" --seed 4 --dtype bf16 --out "$T/r2"
if cmp -s "$T/r1/model.safetensors" "$T/r2/model.safetensors"; then ok random_deterministic; else bad random_deterministic; fi
run random_llada "$CONVERT" init --random "$REF/llada/config.json" --out "$T/r3"
run random_vlm "$CONVERT" init --random "$REF/vlm/config.json" --out "$T/r4"
run random_siglip "$CONVERT" init --random "$REF/siglip/config.json" --out "$T/r5"
run info_random "$CONVERT" info --model "$T/r1"

# dvl-convert error paths.
reject convert_no_command "unknown command" "$CONVERT" frob
reject convert_no_out "--out DIR is required" "$CONVERT" init --lm "$REF/qwen2_tied"
reject convert_unknown_opt "unknown option --frob" "$CONVERT" init --frob 1
# a command's --help: the usage on stdout, nothing on stderr, exit 0
for c in init info; do
    if "$CONVERT" $c --help >"$T/out" 2>"$T/err" && [ ! -s "$T/err" ] &&
        grep -q "^usage: dvl-convert init" "$T/out"; then
        ok "convert_${c}_help"
    else
        bad "convert_${c}_help: $(cat "$T/err")"
    fi
done
reject convert_both "exactly one of --lm" "$CONVERT" init --out "$T/x" --lm a --random b
reject convert_dtype "--dtype must be f32 or bf16" "$CONVERT" init --out "$T/x" --lm a --dtype f8
reject convert_seed "--seed must be an integer" "$CONVERT" init --out "$T/x" --random a --seed x1
reject convert_missing_lm "$T/nope/config.json" "$CONVERT" init --out "$T/x" --lm "$T/nope"
reject convert_lm_is_vision "not a language model" "$CONVERT" init --out "$T/x" --lm "$REF/siglip"
reject convert_vision_is_lm "not a SigLIP tower" "$CONVERT" init --out "$T/x" --lm "$REF/qwen2_tied" --vision "$REF/qwen2_untied"
reject convert_vlm_llada "takes a Qwen2 LM" "$CONVERT" init --out "$T/x" --lm "$REF/llada" --vision "$REF/siglip"
reject convert_connector_alone "need --vision" "$CONVERT" init --out "$T/x" --lm "$REF/qwen2_tied" --connector-seed 1
reject convert_connector_missing "missing tensor \"model.mm_projector.0.weight\"" "$CONVERT" init --out "$T/x" \
    --lm "$REF/qwen2_tied" --vision "$REF/siglip" --connector "$REF/qwen2_tied/model.safetensors"
printf '{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 8}' >"$T/cfg.json"
reject convert_random_bad_config "missing key \"num_hidden_layers\"" "$CONVERT" init --out "$T/x" --random "$T/cfg.json"
printf '{"architectures": ["Qwen2ForCausalLM"' >"$T/cfg2.json"
reject convert_random_bad_json "malformed JSON" "$CONVERT" init --out "$T/x" --random "$T/cfg2.json"
reject info_missing "cannot open" "$CONVERT" info --model "$T/nope"
# Sizes whose tensors would overflow (2^31 x 2^31 elements): an error naming
# config.json and the tensor, not an overflow. (Found by fuzzing config.json.)
mkdir -p "$T/huge"
sed 's/"hidden_size": *[0-9]*/"hidden_size": 2147483648/' "$REF/qwen2_tied/config.json" \
    >"$T/huge/config.json"
cp "$REF/qwen2_tied/model.safetensors" "$T/huge/"
reject info_huge_config "$T/huge/config.json: parameter model.layers.0.self_attn.q_proj.weight: dimension 1 of size 2147483648 makes it more than 2^40 elements" \
    "$CONVERT" info --model "$T/huge"
reject convert_random_huge_config "$T/huge/config.json: parameter" \
    "$CONVERT" init --out "$T/x" --random "$T/huge/config.json"

# dvl-generate error paths.
reject gen_no_prompt "give one of --prompt TEXT" "$GENERATE" --model "$REF/qwen2_tied"
reject gen_unknown "unknown option --frob" "$GENERATE" --score --frob
reject gen_no_model "--model DIR is required" "$GENERATE" --score --ids "$T/ids.json" --logits-out "$T/x.npy"
reject gen_no_out "--logits-out FILE.npy is required" "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/ids.json"
printf '[1, 2, "x"]' >"$T/bad_ids.json"
reject gen_bad_ids "id 2 is not a 32-bit integer" "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/bad_ids.json" --logits-out "$T/x.npy"
# A number beyond int32 is the same error, not a conversion out of range
# (undefined in C; the sanitizer build checks float-cast-overflow).
printf '[1, 2, 1e300]' >"$T/huge_ids.json"
reject gen_huge_ids "id 2 is not a 32-bit integer" "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/huge_ids.json" --logits-out "$T/x.npy"
printf '[1, 2,' >"$T/bad_json.json"
reject gen_bad_json "malformed JSON" "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/bad_json.json" --logits-out "$T/x.npy"
printf '[1, 2, 128]' >"$T/oob.json"
reject gen_id_range "128" "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/oob.json" --logits-out "$T/x.npy"
reject gen_siglip "vision tower" "$GENERATE" --score --model "$REF/siglip" --ids "$T/ids.json" --logits-out "$T/x.npy"
reject gen_image_on_lm "without a vision tower" "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/ids.json" \
    --image "$DATA/images/gray.jpg" --logits-out "$T/x.npy"
reject gen_placeholders "image placeholder ids" "$GENERATE" --score --model "$T/v" --ids "$T/vlm_ids.json" \
    --image "$DATA/images/gray.jpg" --image "$DATA/images/gray.jpg" --logits-out "$T/x.npy"
reject gen_pixels_name "no tensor \"pixel_values\"" "$GENERATE" --score --model "$T/v" --ids "$T/vlm_ids.json" \
    --pixels "$REF/siglip/model.safetensors" --logits-out "$T/x.npy"
# A safetensors file with one F32 tensor "pixel_values" of shape [5].
hdr='{"pixel_values":{"dtype":"F32","shape":[5],"data_offsets":[0,20]}}'
while [ $((${#hdr} % 8)) -ne 0 ]; do hdr="$hdr "; done
{ printf "\\$(printf %03o ${#hdr})\\0\\0\\0\\0\\0\\0\\0"; printf '%s' "$hdr"; head -c 20 /dev/zero; } >"$T/px5.safetensors"
reject gen_pixels_shape "has shape [5]" "$GENERATE" --score --model "$T/v" --ids "$T/vlm_ids.json" \
    --pixels "$T/px5.safetensors" --logits-out "$T/x.npy"
reject gen_image_missing "nope.png" "$GENERATE" --score --model "$T/v" --ids "$T/vlm_ids.json" \
    --image "$T/nope.png" --logits-out "$T/x.npy"
reject gen_out_dir "$T/nodir/x.npy" "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/ids.json" --logits-out "$T/nodir/x.npy"

# Generation on token ids (the fixtures have no tokenizer): each mode runs,
# is deterministic, and block mode with --steps = block size at temperature
# 0 gives max-new-tokens ids.
for m in block full ar; do
    run "gen_$m" "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 126 \
        --max-new-tokens 13 --mode $m --block-size 4 --steps 2 --temperature 0.7 --seed 3
    cp "$T/out" "$T/gen_$m.1"
    run "gen_${m}_again" "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 126 \
        --max-new-tokens 13 --mode $m --block-size 4 --steps 2 --temperature 0.7 --seed 3
    if cmp -s "$T/out" "$T/gen_$m.1"; then ok "gen_${m}_deterministic"; else bad "gen_${m}_deterministic"; fi
    [ "$(tr -cd , <"$T/out" | wc -c)" -eq 12 ] && ok "gen_${m}_count" || bad "gen_${m}_count: $(cat "$T/out")"
done
run gen_vlm_image "$GENERATE" --model "$T/v" --ids "$T/vlm_ids.json" --image "$DATA/images/gray.jpg" \
    --mask-id 126 --max-new-tokens 8 --remasking dynamic --threshold 0.5
# --device: cpu is the default (the same ids); a bad name is one line.
run gen_device_cpu "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 126 \
    --max-new-tokens 13 --mode block --block-size 4 --steps 2 --temperature 0.7 --seed 3 --device cpu
cmp -s "$T/out" "$T/gen_block.1" && ok gen_device_cpu_is_default || bad gen_device_cpu_is_default
reject gen_device_bad "--device must be cpu or cuda (got tpu)" "$GENERATE" --model "$REF/qwen2_tied" \
    --ids "$T/ids.json" --mask-id 126 --device tpu
# --precision: f32 is the default (the same ids); another name is one line.
run gen_precision_f32 "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 126 \
    --max-new-tokens 13 --mode block --block-size 4 --steps 2 --temperature 0.7 --seed 3 \
    --precision f32
cmp -s "$T/out" "$T/gen_block.1" && ok gen_precision_f32_is_default || bad gen_precision_f32_is_default
reject gen_precision_bad "--precision must be f32 or bf16 (got fp8)" "$GENERATE" \
    --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 126 --precision fp8
# --attention: f32 is what the CPU does (the same ids); tf32 and bf16 name
# GPU arithmetic, one line on the CPU; another name is one line.
run gen_attention_f32 "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 126 \
    --max-new-tokens 13 --mode block --block-size 4 --steps 2 --temperature 0.7 --seed 3 \
    --attention f32
cmp -s "$T/out" "$T/gen_block.1" && ok gen_attention_f32_on_cpu_is_default ||
    bad gen_attention_f32_on_cpu_is_default
reject gen_attention_tf32_on_cpu "--attention tf32 needs --device cuda" "$GENERATE" \
    --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 126 --attention tf32
reject gen_attention_bad "--attention must be f32, tf32 or bf16 (got fp8)" "$GENERATE" \
    --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 126 --attention fp8
# --device cuda without a CUDA build or without a usable GPU: one line
# naming --device, non-zero exit. Where a GPU answers it must generate
# (scripts/gpu-check compares its ids with the CPU's).
"$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 126 --max-new-tokens 13 \
    --device cuda >"$T/out" 2>"$T/err"
rc=$?
if [ $rc -eq 0 ]; then
    [ "$(tr -cd , <"$T/out" | wc -c)" -eq 12 ] && ok gen_device_cuda_ran || bad "gen_device_cuda_ran: $(cat "$T/out")"
    "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 126 --max-new-tokens 13 \
        --device cuda --precision bf16 >"$T/out" 2>"$T/err" &&
        [ "$(tr -cd , <"$T/out" | wc -c)" -eq 12 ] && ok gen_device_cuda_bf16_ran ||
        bad "gen_device_cuda_bf16_ran: $(cat "$T/out" "$T/err")"
    "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 126 --max-new-tokens 13 \
        --device cuda --precision bf16 --attention tf32 >"$T/out" 2>"$T/err" &&
        [ "$(tr -cd , <"$T/out" | wc -c)" -eq 12 ] && ok gen_device_cuda_bf16_tf32_attention_ran ||
        bad "gen_device_cuda_bf16_tf32_attention_ran: $(cat "$T/out" "$T/err")"
elif [ "$(wc -l <"$T/err")" -eq 1 ] && grep -qF -- "--device cuda" "$T/err"; then
    ok gen_device_cuda_unavailable
else
    bad "gen_device_cuda_unavailable: rc $rc: $(cat "$T/err")"
fi
reject gen_missing_model "$T/nope/config.json" "$GENERATE" --model "$T/nope" --ids "$T/ids.json"
reject gen_steps_gt_block "--steps 9 exceeds the block size 8" "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --steps 9
reject gen_block_zero "--block-size must be an integer >= 1 (got 0)" "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --block-size 0
reject gen_steps_zero "--steps must be an integer >= 1 (got 0)" "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --steps 0
reject gen_bad_mode "--mode must be block, full or ar" "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --mode fast
reject gen_bad_remask "--remasking must be static or dynamic" "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --remasking x
reject gen_no_mask "no mask token" "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json"
reject gen_mask_range "mask token id 128" "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 128
reject gen_past_positions "prompt 0 of 11 positions + 2147483647 new tokens is more than the" \
    "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --mask-id 3 --max-new-tokens 2147483647 --mode full
reject gen_no_tokenizer "no tokenizer" "$GENERATE" --model "$REF/qwen2_tied" --prompt hi
reject gen_image_unreadable "$T/nope.png" "$GENERATE" --model "$T/v" --ids "$T/vlm_ids.json" --image "$T/nope.png" --mask-id 3
reject gen_two_inputs "give one of" "$GENERATE" --model "$REF/qwen2_tied" --ids "$T/ids.json" --prompt hi
reject gen_eval_meta "--eval FILE.json and --meta FILE.jsonl go together" "$GENERATE" --model "$REF/qwen2_tied" --eval "$T/x.json"
# Text prompts through the Qwen2.5 tokenizer on tiny random models with its
# vocabulary: a VLM (SigLIP fixture config, image placeholder -200).
sed -e 's/"vocab_size": 128/"vocab_size": 151680/' -e 's/"image_token_index": 5/"image_token_index": -200/' \
    -e 's/"tie_word_embeddings": false/"tie_word_embeddings": true/' "$REF/vlm/config.json" >"$T/qcfg.json"
run convert_qvlm "$CONVERT" init --random "$T/qcfg.json" --seed 5 --out "$T/qv"
QTOK="$DATA/qwen-tokenizer"
run gen_prompt "$GENERATE" --model "$T/qv" --tokenizer "$QTOK" --image "$DATA/images/rgb8.png" \
    --prompt "What is this?" --mask-id 151660 --max-new-tokens 10 --timing
[ "$(wc -l <"$T/out")" -eq 1 ] && grep -q "forwards" "$T/err" && ok gen_prompt_output || bad gen_prompt_output
# The same tokenizer on a model of 128 rows: another model's tokenizer, one
# line before any decoding.
reject gen_tokenizer_past_embedding "tokenizer $QTOK has 151669 ids, the embedding of $REF/qwen2_tied has 128 rows" \
    "$GENERATE" --model "$REF/qwen2_tied" --tokenizer "$QTOK" --prompt hi --mask-id 3
# Options, config and tokenizer are checked before the weights are read: a
# model folder without them gives the same line.
mkdir -p "$T/cfgonly" && cp "$REF/qwen2_tied/config.json" "$T/cfgonly/"
reject gen_checks_before_weights "tokenizer $QTOK has 151669 ids, the embedding of $T/cfgonly has 128 rows" \
    "$GENERATE" --model "$T/cfgonly" --tokenizer "$QTOK" --prompt hi --mask-id 3
# A stage-2 export's mask_token_id and diffusion_block_size are the defaults
# of --mask-id and --block-size: the same text as giving them.
mkdir -p "$T/qv2"
cp "$T/qv/model.safetensors" "$T/qv2/"
python3 -c "
import json
c = json.load(open('$T/qv/config.json'))
c['mask_token_id'], c['diffusion_block_size'] = 151660, 4
json.dump(c, open('$T/qv2/config.json', 'w'))"
run gen_flags "$GENERATE" --model "$T/qv" --tokenizer "$QTOK" --prompt "Say hi." --mask-id 151660 \
    --block-size 4 --max-new-tokens 9
cp "$T/out" "$T/flags.txt"
run gen_config "$GENERATE" --model "$T/qv2" --tokenizer "$QTOK" --prompt "Say hi." --max-new-tokens 9
cmp -s "$T/out" "$T/flags.txt" && ok gen_mask_and_block_from_config || bad gen_mask_and_block_from_config
reject gen_steps_over_config_block "exceeds the model's block size 4" "$GENERATE" --model "$T/qv2" \
    --tokenizer "$QTOK" --prompt "Say hi." --steps 6
printf '{"prompt": "Describe the image.", "image": "%s"}\n{"prompt": "Say hi."}\n\n{"prompt": "Count.", "image": "%s"}\n' \
    "$DATA/images/rgb8.png" "$DATA/images/gray.jpg" >"$T/p.jsonl"
for m in block ar; do
    run "gen_prompts_$m" "$GENERATE" --model "$T/qv" --tokenizer "$QTOK" --prompts "$T/p.jsonl" \
        --mask-id 151660 --max-new-tokens 9 --mode $m --temperature 0.9 --seed 2
    sed 's/"forwards.*//' "$T/out" >"$T/one.txt"
    run "gen_prompts_${m}_batch" "$GENERATE" --model "$T/qv" --tokenizer "$QTOK" --prompts "$T/p.jsonl" \
        --mask-id 151660 --max-new-tokens 9 --mode $m --temperature 0.9 --seed 2 --batch 3
    sed 's/"forwards.*//' "$T/out" >"$T/three.txt"
    if [ "$(wc -l <"$T/one.txt")" -eq 3 ] && cmp -s "$T/one.txt" "$T/three.txt"; then
        ok "gen_batch_equals_singles_$m"
    else
        bad "gen_batch_equals_singles_$m"
    fi
done
# --eval on a two-sample split in the synthetic dataset's format.
mkdir -p "$T/ev/images"
cp "$DATA/images/rgb8.png" "$T/ev/images/a.png"
cp "$DATA/images/gray.jpg" "$T/ev/images/b.jpg"
cat >"$T/ev/heldout.json" <<'JSON'
[
{"id":"s0","image":"images/a.png","conversations":[{"from":"human","value":"<image>\nDescribe the image."},{"from":"gpt","value":"a red circle."}]},
{"id":"s1","image":"images/b.jpg","conversations":[{"from":"human","value":"<image>\nHow many stars are there?"},{"from":"gpt","value":"two."}]}
]
JSON
printf '{"id":"s0","question":"caption","answer":"a red circle."}\n{"id":"s1","question":"count","answer":"two."}\n' >"$T/ev/meta.jsonl"
run gen_eval "$GENERATE" --model "$T/qv" --tokenizer "$QTOK" --eval "$T/ev/heldout.json" --meta "$T/ev/meta.jsonl" \
    --mask-id 151660 --max-new-tokens 6
grep -q "^accuracy .* (0/2); shape .* (1), colour .* (1), count .* (2)" "$T/out" && ok gen_eval_summary || bad "gen_eval_summary: $(tail -1 "$T/out")"
printf '{"id":"s0","question":"caption","answer":"a red circle."}\n{"id":"sX","question":"count","answer":"two."}\n' >"$T/ev/meta2.jsonl"
reject gen_eval_mismatch "with the same id" "$GENERATE" --model "$T/qv" --tokenizer "$QTOK" --eval "$T/ev/heldout.json" \
    --meta "$T/ev/meta2.jsonl" --mask-id 151660 --max-new-tokens 2
reject gen_score_opt "--steps does not apply" "$GENERATE" --score --model "$REF/qwen2_tied" --ids "$T/ids.json" --logits-out "$T/x.npy" --steps 2

[ $fails -eq 0 ] || { echo "$fails failed"; exit 1; }
