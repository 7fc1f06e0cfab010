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
