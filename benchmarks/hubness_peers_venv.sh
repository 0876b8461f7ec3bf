#!/usr/bin/env bash
# The peers of the hubness experiment's shift section and bench_hubness_reduction.py, in their own
# venv: kiez 0.5.0 pins numpy < 2 and pandas < 2, so it cannot share the project's .venv.
# nnn-retrieval 1.0.1 (MIT) goes in without its declared dependencies: it lists an unpinned torch,
# which on PyPI is a multi-GB CUDA build; the CPU wheel is installed first, pinned as in the Makefile.
# faiss-cpu is kiez's FAISS backend (bench_hubness_scale.py's kiez row); kiez imports it when present.
#   bash benchmarks/hubness_peers_venv.sh [DIR]          (default: .venv-peers)
#   KEXUE_PEERS_PYTHON=DIR/bin/python kexue reproduce hubness
set -euo pipefail
DIR="${1:-.venv-peers}"
python3 -m venv "$DIR"
"$DIR/bin/pip" install --quiet --upgrade pip
"$DIR/bin/pip" install --quiet torch==2.13.0 tqdm
"$DIR/bin/pip" install --quiet kiez==0.5.0
"$DIR/bin/pip" install --quiet --no-deps nnn-retrieval==1.0.1
"$DIR/bin/pip" install --quiet faiss-cpu==1.15.1   # kiez's FAISS path (bench_hubness_scale.py); numpy >= 1.25 suffices
"$DIR/bin/python" -c "import faiss, kiez, nnn, numpy, torch; print('kiez', kiez.__version__ if hasattr(kiez, '__version__') else '0.5.0', 'numpy', numpy.__version__, 'torch', torch.__version__)"
echo "export KEXUE_PEERS_PYTHON=$(cd "$DIR" && pwd)/bin/python"
