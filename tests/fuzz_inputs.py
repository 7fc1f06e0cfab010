#!/usr/bin/env python3
"""Mutation fuzzing of the programs' inputs: every run must either succeed
or fail the way the README promises for bad input: a non-zero exit, exactly
one line on stderr naming the program, no signal, no sanitizer report (in
the ASan/UBSan build), no PATH.tmp left behind and no output file written.

Each target copies pristine inputs made here (a tiny random VLM, a synthetic
dataset and its tokenizer, a checkpoint, decoding inputs), mutates one or
two of its files and runs one program on them:

  model     config.json / model.safetensors (its JSON header or bytes)  dvl-convert info
  shards    the same model as two shards: the index, either shard       dvl-convert info
  ids       the --ids file                                              dvl-generate --score
  prompts   a line of --prompts                                         dvl-generate
  eval      heldout.json / heldout_meta.jsonl                           dvl-generate --eval
  tokenizer tokenizer.json / tokenizer_config.json                      dvl-prep tokenize
  prep      train.json of the synthetic set                             dvl-prep build
  config    the training config                                         dvl-train
  dataset   manifest.json / a shard's sidecar / the HDF5 shard          dvl-train
  h5        the HDF5 shard, its manifest checksum made to agree         dvl-train
  evalset   the held-out dataset (eval.path): as dataset                dvl-train
  resume    state.json / optimizer / model / config of a checkpoint     dvl-train --resume
  options   the command line of every program (a value made odd, an     all four
            option dropped, repeated, unknown or left without its value)

JSON files get structural mutations (a value of another type or size, a
key removed, the text cut short), binary ones flipped bytes or a cut; the
options target mutates the arguments instead of a file. The
mutations come from --seed alone, so a run is reproducible; --keep DIR keeps
each failing case's folder with a STDERR file that says what ran.

  fuzz_inputs.py --bin BUILD_DIR --src SOURCE_DIR [--n N] [--seed S]
                 [--targets a,b,...] [--keep DIR]
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

# --------------------------------------------------------------- mutations

ODD_VALUES = [None, True, -1, 0, 1, 2**31, 2**63, -2**63, 1e308, -0.0, 0.5, "", "x" * 300,
              "NaN", [], {}, [1, 2], {"a": 1}, "../../etc", 3]


def mutate_json(text, rnd):
    """One structural change to a JSON document (bytes out)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return mutate_bytes(text.encode(), rnd)
    paths = []

    def walk(o, p):
        paths.append(p)
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else []
        for k, v in items:
            walk(v, p + [k])

    walk(doc, [])
    if len(paths) == 1:  # a bare value: replace it
        return json.dumps(rnd.choice(ODD_VALUES)).encode()
    p = rnd.choice(paths[1:])
    parent = doc
    for k in p[:-1]:
        parent = parent[k]
    k, cur, op = p[-1], parent[p[-1]], rnd.random()
    if op < 0.25:
        del parent[k]
    elif isinstance(cur, (int, float)) and not isinstance(cur, bool) and op < 0.6:
        parent[k] = rnd.choice([cur + 1, cur - 1, cur * 2, -cur, cur * 1000, 0])
    elif isinstance(cur, str) and cur and op < 0.6:
        i = rnd.randrange(len(cur))
        parent[k] = cur[:i] + rnd.choice(["", "\u00e9", "\x00", "0", "/", "\"", "9"]) + cur[i + 1:]
    else:
        parent[k] = rnd.choice(ODD_VALUES)
    out = json.dumps(doc)
    if rnd.random() < 0.1:
        out = out[:rnd.randrange(len(out) + 1)]
    return out.encode()


ODD_ARGS = ["", "-1", "0", "1e300", "nan", "inf", "-0", "2147483648", "99999999999999999999",
            "x", "0x10", " 5", "1.5", "/nonexistent/x", "a" * 5000, "-", "\u00e9", "--out"]


class Argv:
    """A target whose command line is what gets mutated: bases are commands
    that succeed as given (checked before the runs), each run one of them
    mutated."""

    def __init__(self, bases):
        self.bases = bases

    def __call__(self, rnd):
        return mutate_argv(self.bases, rnd)


def mutate_argv(cmds, rnd):
    """One or two changes to the arguments of one of cmds (lists whose
    options start with "--"; the first word after the program is kept)."""
    argv = list(rnd.choice(cmds))
    for _ in range(rnd.choice([1, 1, 2])):
        # After the first change (a flag renamed or dropped), from what is left.
        flags = [a for a in argv[2:] if a.startswith("--")]
        op = rnd.random()
        values = [i for i in range(2, len(argv)) if not argv[i].startswith("--")]
        if op < 0.45 and values:
            argv[rnd.choice(values)] = rnd.choice(ODD_ARGS)
        elif op < 0.6 and len(argv) > 2:
            del argv[rnd.randrange(2, len(argv))]
        elif op < 0.7 and flags:
            i = argv.index(rnd.choice(flags), 2)
            argv[i + 1:i + 1] = argv[i:i + 2]
        elif op < 0.8 and flags:
            argv.append(rnd.choice(flags))
        elif op < 0.9 and flags:
            argv[argv.index(rnd.choice(flags), 2)] = rnd.choice(["--frob", "-", "--", "-x"])
        elif len(argv) > 3:
            i, j = rnd.sample(range(2, len(argv)), 2)
            argv[i], argv[j] = argv[j], argv[i]
    return argv


def mutate_bytes(b, rnd, head=None):
    """A cut, or 1-8 bytes changed (within the first `head` bytes if given)."""
    b = bytearray(b)
    if rnd.random() < 0.2 and b:
        return bytes(b[:rnd.randrange(len(b))])
    lim = min(len(b), head) if head else len(b)
    for _ in range(rnd.choice([1, 1, 2, 4, 8])):
        if lim:
            i = rnd.randrange(lim)
            b[i] = rnd.choice([0, 0xff, 0x7f, 0x80, b[i] ^ (1 << rnd.randrange(8)), ord('"'),
                               ord('9'), ord('{'), ord(',')])
    return bytes(b)


def mutate_file(path, rnd):
    data = open(path, "rb").read()
    if path.endswith(".jsonl"):
        lines = data.decode("utf-8", "replace").splitlines()
        i = rnd.randrange(len(lines))
        lines[i] = mutate_json(lines[i], rnd).decode("utf-8", "replace")
        new = ("\n".join(lines) + "\n").encode()
    elif path.endswith(".json"):
        new = mutate_json(data.decode("utf-8", "replace"), rnd)
    elif path.endswith(".safetensors"):
        # 8-byte little-endian header length, the JSON header, the data
        hl = int.from_bytes(data[:8], "little")
        if rnd.random() < 0.5 and 8 + hl <= len(data):
            hdr = mutate_json(data[8:8 + hl].decode("utf-8", "replace"), rnd)
            n = len(hdr) if rnd.random() < 0.9 else rnd.choice([0, 1, len(hdr) + 8, 2**40])
            new = n.to_bytes(8, "little") + hdr + data[8 + hl:]
        else:
            new = mutate_bytes(data, rnd, head=8 + hl)
    else:
        new = mutate_bytes(data, rnd)
    open(path, "wb").write(new)


def fnv1a64(b):
    h = 0xcbf29ce484222325
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def mutate_shard_past_checksum(ds, rnd):
    """Change the shard's bytes and make the manifest's size and FNV-1a
    agree: what the HDF5 reader and the loader's checks then see."""
    h5 = os.path.join(ds, "shard-00000.h5")
    data = open(h5, "rb").read()
    new = data
    while new == data:
        new = mutate_bytes(data, rnd)
    open(h5, "wb").write(new)
    mpath = os.path.join(ds, "manifest.json")
    m = json.load(open(mpath))
    m["shard_files"][0]["bytes"] = len(new)
    m["shard_files"][0]["fnv1a64"] = fnv1a64(new)
    json.dump(m, open(mpath, "w"))

# ----------------------------------------------------------------- inputs


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def make_inputs(b, src, root):
    """The pristine inputs every target copies from."""
    os.chdir(root)
    steps = [
        [b.prep, "synth", "--out", "syn", "--n", "16", "--heldout", "2", "--seed", "3",
         "--size", "64"],
        [b.prep, "build", "--json", "syn/train.json", "--images", "syn", "--tokenizer",
         "syn/tokenizer", "--out", "ds", "--image-size", "28", "--image-tokens", "4", "--quiet"],
        [b.convert, "init", "--random", os.path.join(src, "configs/models/tiny-vlm.json"),
         "--seed", "1", "--out", "m0"],
    ]
    cfg = {"model": {"path": root + "/m0"}, "data": {"path": root + "/ds"},
           "train": {"stage": "2", "out": root + "/ck", "micro_batch": 4, "global_batch": 8,
                     "max_steps": 1, "vision_trainable": True},
           "diffusion": {"block_size": 8, "mask_token_id": 412, "eos_token_id": 410},
           "eval": {"path": root + "/ds", "every": 1},
           "log": {"mfu": False}}
    json.dump(cfg, open("s2.json", "w"), indent=1)
    steps.append([b.train, "--config", "s2.json"])  # ck/ckpt/step-000001 to resume from
    for s in steps:
        p = run(s, stdin=subprocess.DEVNULL)
        if p.returncode:
            sys.exit("fuzz_inputs: setting up: %s failed: %s" % (" ".join(s), p.stderr.strip()))
    shutil.rmtree("ck/final")
    split_checkpoint("m0", "m0s")
    open("tok.jsonl", "w").write('{"text": "hello world"}\n{"text": "a red circle"}\n')
    open("ids.json", "w").write("[1, 2, 3, 4, 5, 6]\n")
    img = os.path.join(root, "syn/images", sorted(os.listdir("syn/images"))[0])
    open("prompts.jsonl", "w").write(json.dumps({"prompt": "Describe the image.", "image": img})
                                     + "\n" + json.dumps({"prompt": "hi"}) + "\n")


def split_checkpoint(src, dst):
    """src's model.safetensors as two shards and an index, the way Hugging
    Face saves a large model."""
    data = open(os.path.join(src, "model.safetensors"), "rb").read()
    hl = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + hl])
    body = data[8 + hl:]
    names = sorted(k for k in header if k != "__metadata__")
    os.makedirs(dst)
    shutil.copy(os.path.join(src, "config.json"), dst)
    weight_map = {}
    for i, part in enumerate([names[:len(names) // 2], names[len(names) // 2:]]):
        fname = "model-%05d-of-00002.safetensors" % (i + 1)
        h, chunks, off = {}, [], 0
        for k in part:
            a, z = header[k]["data_offsets"]
            h[k] = dict(header[k], data_offsets=[off, off + z - a])
            chunks.append(body[a:z])
            off += z - a
            weight_map[k] = fname
        hj = json.dumps(h).encode()
        hj += b" " * (-len(hj) % 8)
        open(os.path.join(dst, fname), "wb").write(len(hj).to_bytes(8, "little") + hj
                                                   + b"".join(chunks))
    json.dump({"metadata": {"total_size": len(body)}, "weight_map": weight_map},
              open(os.path.join(dst, "model.safetensors.index.json"), "w"), indent=1)


def targets(b, root):
    """name: (inputs to copy, files to mutate, command, stdin file, outputs
    a failing run must not leave)."""
    gen = [b.generate, "--model", root + "/m0", "--tokenizer", root + "/syn/tokenizer",
           "--max-new-tokens", "8", "--mask-id", "412"]
    train = [b.train, "--config", root + "/s2.json", "--set", "train.out=o", "train.max_steps=2"]
    ck = "ck/ckpt/step-000001"
    return {
        "model": (["m0"], ["m0/config.json", "m0/model.safetensors"],
                  [b.convert, "info", "--model", "m0"], None, []),
        "shards": (["m0s"], ["m0s/model.safetensors.index.json",
                             "m0s/model-00001-of-00002.safetensors",
                             "m0s/model-00002-of-00002.safetensors"],
                   [b.convert, "info", "--model", "m0s"], None, []),
        "ids": (["ids.json"], ["ids.json"],
                [b.generate, "--score", "--model", root + "/m0", "--ids", "ids.json",
                 "--logits-out", "l.npy"], None, ["l.npy"]),
        "prompts": (["prompts.jsonl"], ["prompts.jsonl"], gen + ["--prompts", "prompts.jsonl"],
                    None, []),
        "eval": (["syn"], ["syn/heldout.json", "syn/heldout_meta.jsonl"],
                 gen + ["--eval", "syn/heldout.json", "--meta", "syn/heldout_meta.jsonl"], None, []),
        "tokenizer": (["syn"], ["syn/tokenizer/tokenizer.json", "syn/tokenizer/tokenizer_config.json"],
                      [b.prep, "tokenize", "--tokenizer", "syn/tokenizer"], root + "/tok.jsonl", []),
        "prep": (["syn"], ["syn/train.json"],
                 [b.prep, "build", "--json", "syn/train.json", "--images", "syn", "--tokenizer",
                  "syn/tokenizer", "--out", "dsn", "--image-size", "28", "--image-tokens", "4",
                  "--quiet"], None, ["dsn/manifest.json"]),
        "config": (["s2.json"], ["s2.json"],
                   [b.train, "--config", "s2.json", "--set", "train.out=o", "train.max_steps=2"],
                   None, ["o/final/model.safetensors"]),
        "dataset": (["ds"], ["ds/manifest.json", "ds/shard-00000.json", "ds/shard-00000.h5"],
                    train + ["data.path=ds"], None, ["o/final/model.safetensors"]),
        "h5": (["ds"], ["SHARD"], train + ["data.path=ds"], None, ["o/final/model.safetensors"]),
        "evalset": (["ds"], ["ds/manifest.json", "ds/shard-00000.json", "ds/shard-00000.h5"],
                    train + ["eval.path=ds"], None, ["o/final/model.safetensors"]),
        "resume": ([ck], [ck + "/state.json", ck + "/optimizer.safetensors",
                          ck + "/model.safetensors", ck + "/config.json"],
                   train + ["--resume", ck], None, ["o/final/model.safetensors"]),
        "options": (["syn", "prompts.jsonl", "ids.json", "s2.json"], [],
                    Argv([
                        gen + ["--prompts", "prompts.jsonl", "--mode", "block", "--block-size",
                               "8", "--steps", "4", "--remasking", "dynamic", "--threshold",
                               "0.9", "--temperature", "0", "--top-k", "0", "--top-p", "1",
                               "--seed", "1", "--batch", "2"],
                        [b.generate, "--score", "--model", root + "/m0", "--ids", "ids.json",
                         "--logits-out", "l.npy"],
                        [b.train, "--config", "s2.json", "--stage", "2", "--set", "train.out=o",
                         "train.max_steps=1"],
                        [b.convert, "init", "--random", root + "/m0/config.json", "--seed", "1",
                         "--dtype", "bf16", "--out", "mc"],
                        [b.convert, "info", "--model", root + "/m0"],
                        [b.prep, "synth", "--out", "sy", "--n", "4", "--heldout", "1", "--seed",
                         "2", "--size", "64", "--max-shapes", "2", "--max-groups", "1", "--grid",
                         "2", "--radius", "30:40", "--background", "grey"],
                        [b.prep, "build", "--json", "syn/train.json", "--images", "syn",
                         "--tokenizer", "syn/tokenizer", "--out", "dsn", "--image-size", "28",
                         "--image-tokens", "4", "--shard-size", "8", "--max-len", "200",
                         "--overflow", "skip", "--template", "qwen", "--labels", "assistant",
                         "--deflate", "1", "--threads", "1", "--quiet"],
                        [b.prep, "tokenize", "--tokenizer", "syn/tokenizer"]]),
                    root + "/tok.jsonl",
                    ["l.npy", "o/final/model.safetensors", "mc/model.safetensors",
                     "dsn/manifest.json"]),
    }

# -------------------------------------------------------------------- run


def verdict(p, prog, work, outputs):
    """None if the run kept the promise, else what it broke."""
    if p is None:
        return "no exit within 120 s"
    # With allocator_may_return_null (main()), ASan says so when it returns
    # NULL for a huge request; the program's own handling is what is judged.
    err = re.sub(r"==\d+==WARNING: AddressSanitizer failed to allocate 0x[0-9a-f]+ bytes\n", "",
                 p.stderr)
    if p.returncode < 0:
        return "killed by signal %d" % -p.returncode
    if "Sanitizer" in err or "runtime error:" in err:
        return "sanitizer report"
    for d, _, files in os.walk(work):
        for f in files:
            if f.endswith(".tmp"):
                return "left %s behind" % os.path.join(d, f)
    if p.returncode == 0:
        return None
    lines = [l for l in err.splitlines() if l.strip()]
    if len(lines) != 1 or not re.match(re.escape(prog) + r"( [a-z]+)?: ", lines[0]):
        return "exit %d with %d lines on stderr, not one '%s: ...'" % (p.returncode, len(lines), prog)
    for o in outputs:
        if os.path.exists(os.path.join(work, o)):
            return "failed but wrote %s" % o
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="meson build folder")
    ap.add_argument("--src", required=True, help="source folder")
    ap.add_argument("--n", type=int, default=20, help="runs per target")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", default="")
    ap.add_argument("--keep", default="")
    a = ap.parse_args()
    a.bin, a.src = os.path.abspath(a.bin), os.path.abspath(a.src)

    class B:
        train = os.path.join(a.bin, "train/dvl-train")
        convert = os.path.join(a.bin, "train/dvl-convert")
        generate = os.path.join(a.bin, "train/dvl-generate")
        prep = os.path.join(a.bin, "data/dvl-prep")

    env = dict(os.environ)
    # A config asking for terabytes is an error to report, not an abort
    # of the sanitizer's allocator.
    env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":allocator_may_return_null=1").lstrip(":")
    root = tempfile.mkdtemp(prefix="dvl-fuzz-")
    try:
        make_inputs(B, a.src, root)
        table = targets(B, root)
        names = a.targets.split(",") if a.targets else list(table)
        failures = 0
        for name in names:
            inputs, mutable, cmd, stdin, outputs = table[name]
            rnd = random.Random("%d/%s" % (a.seed, name))
            counts = {"ok": 0, "error": 0, "broken": 0}

            def fresh_work():
                work = os.path.join(root, "work")
                shutil.rmtree(work, ignore_errors=True)
                os.makedirs(work)
                for i in inputs:
                    dst = os.path.join(work, i)
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    (shutil.copytree if os.path.isdir(i) else shutil.copy)(os.path.join(root, i), dst)
                return work

            # Unmutated, every command line of an Argv target must succeed:
            # else its runs would mostly test one failure.
            for base in cmd.bases if isinstance(cmd, Argv) else []:
                p = run(base, cwd=fresh_work(), env=env, timeout=120,
                        stdin=open(stdin) if stdin else subprocess.DEVNULL)
                if p.returncode:
                    sys.exit("fuzz_inputs: %s: %s failed unmutated: %s" % (
                        name, " ".join(base), p.stderr.strip()))
            for it in range(a.n):
                work = fresh_work()
                if callable(cmd):  # the arguments are what is mutated
                    argv = cmd(rnd)
                    chosen = ["arguments " + " ".join(x[:40] for x in argv[1:])]
                else:
                    argv = cmd
                    chosen = [rnd.choice(mutable) for _ in range(rnd.choice([1, 1, 1, 2]))]
                    for f in chosen:
                        if f == "SHARD":
                            mutate_shard_past_checksum(os.path.join(work, "ds"), rnd)
                        else:
                            mutate_file(os.path.join(work, f), rnd)
                try:
                    p = run(argv, cwd=work, env=env, timeout=120,
                            stdin=open(stdin) if stdin else subprocess.DEVNULL)
                except subprocess.TimeoutExpired:
                    p = None
                why = verdict(p, os.path.basename(argv[0]), work, outputs)
                counts["broken" if why else "error" if p.returncode else "ok"] += 1
                if why:
                    failures += 1
                    print("FAIL %s #%d (%s): %s\n  %s" % (name, it, ", ".join(chosen), why,
                          "\n  ".join((p.stderr if p else "").strip().splitlines()[:6])))
                    if a.keep:
                        d = os.path.join(a.keep, "%s-%d-%d" % (name, a.seed, it))
                        shutil.rmtree(d, ignore_errors=True)
                        shutil.copytree(work, d)
                        open(os.path.join(d, "STDERR"), "w").write(
                            "%s\nmutated: %s\nran (in this folder): %s\n%s" % (
                                why, chosen, " ".join(argv), p.stderr if p else ""))
            print("%-9s %3d runs: %3d succeeded, %3d refused cleanly, %d broke the promise" % (
                name, a.n, counts["ok"], counts["error"], counts["broken"]), flush=True)
        sys.exit(1 if failures else 0)
    finally:
        shutil.rmtree(root, ignore_errors=True)


main()
