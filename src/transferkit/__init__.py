"""transferkit: adapt a pre-trained model to your task and data, and see what each regime costs and keeps."""

from .config import RunConfig, load_config
from .errors import UserError
from .runs import Run, train

__all__ = ["RunConfig", "Run", "UserError", "load_config", "train"]
__version__ = "0.1.0"
