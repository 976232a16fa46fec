"""batchrelay.toml: the settings models (`settings`) and the five seed providers' presets (`presets`)."""

from batchrelay.config.settings import (
    DEFAULT_PATHS,
    HealthConfig,
    ProviderConfig,
    ScheduleConfig,
    Settings,
    WorkerConfig,
    load_settings,
    parse_settings,
)

__all__ = [
    "DEFAULT_PATHS", "HealthConfig", "ProviderConfig", "ScheduleConfig", "Settings", "WorkerConfig",
    "load_settings", "parse_settings",
]
