"""Typed configuration: built-in defaults, then a TOML file, then environment variables, every
value checked once at start-up.

The package, by concern: `sections.py` (the sections an operator sets, one dataclass each),
`checks.py` (what a single value must be), `loading.py` (the whole `Config`, the file, the
environment names, coercion and the memory budget), `rendering.py` (check-config's TOML, secrets
masked). Everything the rest of the gateway uses is importable from here: `from gateway.config
import Config`.
"""

from gateway.config.checks import (
    ADMIN_TOKEN_MIN_BITS,
    ADMIN_TOKEN_MIN_DISTINCT,
    ADMIN_TOKEN_MIN_LENGTH,
    SentinelTarget,
    entropy_bits,
    parse_sentinel_url,
)
from gateway.config.loading import (
    CONFIG_FILE_ENV,
    ENV_NAMES,
    ENV_PREFIX,
    SERVICE_LINK,
    Config,
    ConfigError,
    Sources,
    as_dict,
    build_config,
    config_keys,
    env_name,
    env_names,
    load_config,
    load_config_with_sources,
)
from gateway.config.rendering import SECRET_MASK, masked, render_toml
from gateway.config.sections import (
    SESSION_MEMORY_KIB,
    ClientsConfig,
    LimitsConfig,
    LogConfig,
    MetricsConfig,
    MigrationConfig,
    RedisConfig,
    RolloutConfig,
    ServerConfig,
    SessionConfig,
    TracingConfig,
    UpstreamConfig,
    store_memory_mib,
)

__all__ = [
    "ADMIN_TOKEN_MIN_BITS",
    "ADMIN_TOKEN_MIN_DISTINCT",
    "ADMIN_TOKEN_MIN_LENGTH",
    "CONFIG_FILE_ENV",
    "ENV_NAMES",
    "ENV_PREFIX",
    "SECRET_MASK",
    "SERVICE_LINK",
    "SESSION_MEMORY_KIB",
    "ClientsConfig",
    "Config",
    "ConfigError",
    "LimitsConfig",
    "LogConfig",
    "MetricsConfig",
    "MigrationConfig",
    "RedisConfig",
    "RolloutConfig",
    "SentinelTarget",
    "ServerConfig",
    "SessionConfig",
    "Sources",
    "TracingConfig",
    "UpstreamConfig",
    "as_dict",
    "build_config",
    "config_keys",
    "entropy_bits",
    "env_name",
    "env_names",
    "load_config",
    "load_config_with_sources",
    "masked",
    "parse_sentinel_url",
    "render_toml",
    "store_memory_mib",
]
