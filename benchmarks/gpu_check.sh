#!/usr/bin/env bash
# benchmarks/gpu_check.py on an offline GPU machine, with the wheels it lacks carried in .whl/ (git-ignored).
#
#   bash benchmarks/gpu_check.sh --fetch                 # on a machine with network: fill .whl/ (about 20 MB)
#   bash benchmarks/gpu_check.sh --out "$OUT" [FLAGS]    # on the GPU machine: one call, < 8 minutes
#
# The GPU machine keeps its own torch: the wheels go to /tmp/site (pip --no-index --no-deps --target) and
# PYTHONPATH puts them first. If the carried transformers/peft do not import against the machine's other
# libraries, they are dropped and the machine's own run (the report lists the versions that ran).
# FLAGS go to gpu_check.py: --budget-s, --sections, --append-measured, ...
set -euo pipefail
cd "$(dirname "$0")/.."
WHL=.whl
SITE=${GPU_CHECK_SITE:-/tmp/site}

if [ "${1:-}" = "--fetch" ]; then
    mkdir -p "$WHL"
    # pure-Python wheels pinned to constraints.txt's versions; pytest for the CUDA loss tests
    pins=$(grep -iE '^(transformers|peft|pytest|pluggy|iniconfig|pygments|liger-kernel)==' constraints.txt || true)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$WHL" $pins
    # bitsandbytes (QLoRA): its wheel holds a library per CUDA version; keep CUDA 13's and the CPU one
    bnb=$(grep -iE '^bitsandbytes==' constraints.txt || echo bitsandbytes)
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_24_x86_64 -d "$tmp" "$bnb"
    python3 - "$tmp" "$WHL" <<'EOF'
import csv, io, pathlib, re, sys, zipfile
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for whl in src.glob("bitsandbytes-*.whl"):
    drop = re.compile(r"libbitsandbytes_(?!cpu|cuda13)\w+\.(so|dll|dylib)$")
    with zipfile.ZipFile(whl) as zin, zipfile.ZipFile(dst / whl.name, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if drop.search(item.filename):
                continue
            data = zin.read(item)
            if item.filename.endswith(".dist-info/RECORD"):   # the dropped files leave the record too
                rows = [r for r in csv.reader(io.StringIO(data.decode())) if r and not drop.search(r[0])]
                buf = io.StringIO()
                csv.writer(buf, lineterminator="\n").writerows(rows)
                data = buf.getvalue().encode()
            zout.writestr(item, data)
EOF
    rm -rf "$tmp"
    du -sh "$WHL"
    ls "$WHL"
    exit 0
fi

if compgen -G "$WHL/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target "$SITE" "$WHL"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    if ! python3 -c "import transformers, peft, transformers.trainer" 2>"$SITE.import.log"; then
        echo "[gpu_check.sh] the carried transformers/peft do not import here (see $SITE.import.log): using the machine's"
        rm -rf "$SITE"/transformers "$SITE"/transformers-* "$SITE"/peft "$SITE"/peft-*
    fi
fi
exec python3 benchmarks/gpu_check.py --device cuda "$@"
