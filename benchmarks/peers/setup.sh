#!/usr/bin/env bash
# Create one virtual environment per peer denoiser under benchmarks/peers/.venvs/<peer>, each
# installed from the package registry (PyPI). Idempotent: a venv whose install finished is kept
# (its .ok marker), a half-made one is rebuilt. Usage:
#
#     bash benchmarks/peers/setup.sh                    # every peer
#     bash benchmarks/peers/setup.sh deepcad careamics  # some
#     FORCE=1 bash benchmarks/peers/setup.sh deepcad    # rebuild
#
# A peer that fails to install leaves .venvs/<peer>/FAILED with the reason (the tail of pip's
# log); benchmarks/peers.py shows that reason in its table. PyTorch is pinned to the repo's
# constraints.txt (torch==2.13.0, a CPU build here), never a newer CUDA download.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENVS="$HERE/.venvs"
CONSTRAINTS="$ROOT/constraints.txt"
mkdir -p "$VENVS"

find_python() { # find_python 3.11 -> path of a working python3.11, or nothing
    local v="$1" cand
    for cand in "$(command -v "python$v" 2>/dev/null)" \
        "$(pyenv root 2>/dev/null)"/versions/"$v"*/bin/python"$v" \
        /usr/bin/python"$v" /usr/local/bin/python"$v"; do
        if [[ -n "$cand" && -x "$cand" ]] &&
            "$cand" -c 'import sys; print(sys.executable)' 2>/dev/null; then
            return 0
        fi
    done
    return 1
}

# make_venv PEER PYVERSION: (re)create the venv unless done; returns 1 if already done.
make_venv() {
    local peer="$1" v="$2" py
    local dir="$VENVS/$peer"
    if [[ -f "$dir/.ok" && -z "${FORCE:-}" ]]; then
        echo "[$peer] already installed ($dir)"
        return 1
    fi
    rm -rf "$dir"
    if ! py="$(find_python "$v")"; then
        mkdir -p "$dir"
        echo "no Python $v interpreter found (looked for python$v on PATH and in pyenv)" \
            >"$dir/FAILED"
        echo "[$peer] FAILED: $(cat "$dir/FAILED")"
        return 2
    fi
    echo "[$peer] creating venv with $py"
    "$py" -m venv "$dir" || return 2
    "$dir/bin/python" -m pip install -q --upgrade pip 'setuptools<70' wheel >/dev/null 2>&1 || true
    return 0
}

# pip_in PEER ARGS...: pip install into the peer's venv, logging; on failure write FAILED.
pip_in() {
    local peer="$1"
    shift
    local dir="$VENVS/$peer"
    echo "[$peer] pip install $*"
    if ! "$dir/bin/python" -m pip install "$@" >>"$dir/install.log" 2>&1; then
        {
            echo "pip install $* failed:"
            grep -E "ERROR|error:" "$dir/install.log" | tail -n 8
        } >"$dir/FAILED"
        echo "[$peer] FAILED: see $dir/FAILED"
        return 1
    fi
}

finish() { # finish PEER PYTHON-ARGS...: check that `python PYTHON-ARGS` runs, mark the venv done.
    local peer="$1"
    shift
    local dir="$VENVS/$peer"
    if ! "$dir/bin/python" "$@" >>"$dir/install.log" 2>&1; then
        {
            echo "installed, but 'python $*' fails:"
            tail -n 5 "$dir/install.log"
        } >"$dir/FAILED"
        echo "[$peer] FAILED: see $dir/FAILED"
        return 1
    fi
    rm -f "$dir/FAILED"
    "$dir/bin/python" -m pip freeze >"$dir/freeze.txt" 2>/dev/null
    touch "$dir/.ok"
    echo "[$peer] ok"
}

setup_deepcad() {
    # deepcad 1.3.0 on PyPI holds no code (an empty distribution); 1.2.0 is the last that
    # works. Its requirements do not name torch: install the pinned CPU build first.
    # gdown==4.2.0 (a deepcad requirement) imports pkg_resources, gone from setuptools>=81.
    make_venv deepcad 3.11 || return 0
    pip_in deepcad -c "$CONSTRAINTS" torch==2.13.0 tifffile psutil 'setuptools<81' &&
        pip_in deepcad -c "$CONSTRAINTS" deepcad==1.2.0 'setuptools<81' &&
        finish deepcad -c "import deepcad.train_collection, deepcad.test_collection"
}

setup_careamics() {
    # Every careamics release pins torchvision<=0.26 (only its LVAE models use it), which
    # would pull torch<=2.11 as a CUDA download here: install it without dependencies, then
    # its other requirements (careamics 0.3.5 METADATA Requires-Dist) under the torch pin.
    # It still imports torchvision at import time: run_careamics.py puts a stand-in in place
    # (the torchvision wheel built for torch 2.13 is a CUDA build that fails to load here).
    make_venv careamics 3.11 || return 0
    pip_in careamics -c "$CONSTRAINTS" torch==2.13.0 tifffile psutil &&
        pip_in careamics --no-deps careamics==0.3.5 &&
        pip_in careamics -c "$CONSTRAINTS" \
            'bioimageio-core>=0.9.0,<=0.11.0' 'lightning>=2.2,<=2.6.6,!=2.6.2,!=2.6.3' \
            'matplotlib<=3.11.2' 'microssim<=0.0.5' 'numpy>=1.21,<=2.4.6' 'pillow<=13.0.0' \
            'psutil<=7.2.2' 'pydantic>=2.11,<=2.14.1' 'pyyaml<=6.0.3,!=6.0.0' \
            'scikit-image<=0.26.0' 'tifffile<=2026.3.3' 'torchmetrics>0.7.0,<1.9.0' \
            'zarr>=3.0.0,<4.0.0' &&
        finish careamics "$HERE/run_careamics.py" --check
}

setup_deepinterpolation() {
    # deepinterpolation 0.1.4 pins tensorflow==2.4.4 and h5py==2.10.0: wheels exist only for
    # Python 3.6-3.8.
    make_venv deepinterpolation 3.8 || return 0
    pip_in deepinterpolation 'pip<24.1' &&
        pip_in deepinterpolation deepinterpolation==0.1.4 tifffile psutil &&
        finish deepinterpolation -c "import deepinterpolation.generator_collection, \
deepinterpolation.network_collection, deepinterpolation.trainor_collection, \
deepinterpolation.inferrence_collection"
}

peers=("$@")
[[ ${#peers[@]} -eq 0 ]] && peers=(deepcad careamics deepinterpolation)
for p in "${peers[@]}"; do
    case "$p" in
    deepcad | careamics | deepinterpolation) "setup_$p" ;;
    *) echo "unknown peer: $p (deepcad, careamics, deepinterpolation)" >&2 ;;
    esac
done
exit 0
