#!/bin/sh
# dvl-bench's command lines: each command knows its options, so a mistyped
# one is one line and exit 2, not a run with the defaults (a figure for
# another setting); --help is the usage on stdout; a tiny train step runs.
#   test_cli.sh DVL_BENCH
B=$1
T=$(mktemp -d /tmp/dvl-test-bench-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }

# reject NAME WANT ARGS...: exit 2, one stderr line starting with WANT.
reject() {
    name=$1 want=$2
    shift 2
    "$B" "$@" >"$T/out" 2>"$T/err"
    rc=$?
    if [ $rc -eq 2 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && [ "$(head -c ${#want} "$T/err")" = "$want" ]; then
        ok "$name"
    else
        bad "$name: rc $rc: $(cat "$T/err")"
    fi
}
for c in ops tokenizer loader train generate; do
    reject "${c}_unknown_option" "dvl-bench $c: unknown option --frob" $c --frob
    if "$B" $c --help >"$T/out" 2>"$T/err" && [ ! -s "$T/err" ] &&
        grep -q "^usage: dvl-bench $c" "$T/out"; then
        ok "${c}_help"
    else
        bad "${c}_help: $(cat "$T/err")"
    fi
done
reject unknown_command "dvl-bench: unknown command 'frob'" frob
reject train_seq_not_int "dvl-bench train: --seq takes an int, not 2k" train --seq 2k
reject train_seq_past_int "dvl-bench train: --seq takes an int, not 4294967296" train --seq 4294967296
reject train_no_value "dvl-bench train: --steps needs a value" train --steps
reject train_cuda_flag_on_cpu "dvl-bench train: --tf32 needs --device cuda" train --tf32
reject generate_nan "dvl-bench generate: --threshold takes a number, not nan" generate --threshold nan
reject tokenizer_mb "dvl-bench tokenizer: --mb takes a number, not x" tokenizer --mb x
# The options given are the ones used: a 1-layer step of width 896 at
# sequence 16 and vocabulary 64 (seconds).
if "$B" train --layers 1 --seq 16 --block 8 --vocab 64 --steps 1 >"$T/out" 2>"$T/err" &&
    grep -q "1 layers" "$T/out" && grep -q "V 64" "$T/out" && grep -q "best step" "$T/out"; then
    ok train_tiny_runs
else
    bad "train_tiny_runs: $(head -3 "$T/out") $(cat "$T/err")"
fi

echo
if [ $fails -ne 0 ]; then
    echo "$fails failure(s)"
    exit 1
fi
echo "all passed"
