# Helpers shared by test_train.sh and test_train_cuda.sh (sourced).

fails=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }

# py SCRIPT ARGS...: python3 with the standard library only (meson needs it).
py() { python3 -c "$@"; }

# Safetensors reader (stdlib): name -> raw bytes.
ST='
import json, struct, sys
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items()}
'

# compare_runs A B: two runs of the same steps (1 rank and N, say): every
# step's loss within 1e-5 relative, the same model FLOPs (a step's are the
# ranks' summed, whatever their count), final weights within 1e-5 absolute.
compare_runs() {
    py "$ST
import json
def col(d, k): return [json.loads(l)[k] for l in open(d + '/metrics.jsonl')]
la, lb = col('$1', 'loss'), col('$2', 'loss')
assert len(la) == len(lb) > 0
for x, y in zip(la, lb):
    assert abs(x - y) <= 1e-5 * abs(x), (x, y)
assert col('$1', 'model_flops') == col('$2', 'model_flops')
a, b = load('$1/final/model.safetensors'), load('$2/final/model.safetensors')
m = 0.0
for k in a:
    fa = struct.unpack('<%df' % (len(a[k]) // 4), a[k]); fb = struct.unpack('<%df' % (len(b[k]) // 4), b[k])
    m = max(m, max(abs(x - y) for x, y in zip(fa, fb)))
print('   $1 vs $2: %d steps, max weight difference %.3g' % (len(la), m))
sys.exit(0 if m <= 1e-5 else 1)"
}
