"""Face backbones behind a registry, and safe strict checkpoint loading."""
from .checkpoint import extract_state_dict, guess_arch, load_model, read_checkpoint
from .registry import MODELS, create_model, list_models

__all__ = ["MODELS", "create_model", "list_models", "load_model", "read_checkpoint", "extract_state_dict",
           "guess_arch"]
