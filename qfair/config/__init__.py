"""Typed, validated configs: frozen dataclasses loaded from YAML files and overridden by flags."""
from .base import (
    ConfigError,
    cfg_field,
    config_from_dict,
    config_to_dict,
    load_config,
    validate_fields,
)
from .cli_args import add_config_arguments, overrides_from_args

__all__ = [
    "ConfigError",
    "cfg_field",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "validate_fields",
    "add_config_arguments",
    "overrides_from_args",
]
