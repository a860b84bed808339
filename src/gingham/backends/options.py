"""Backend options, the keys of net-conf.json's "Backend" besides Type, judged alike for every
backend: a key the backend does not know is refused with the ones it does, a number is
checked to be one before its range is."""

from __future__ import annotations

from gingham.model.network import BackendConfig, whole_number


class BackendConfigError(ValueError):
    pass


def check_known(config: BackendConfig, known: tuple[str, ...]) -> None:
    unknown = sorted(set(config.options) - set(known))
    if unknown:
        raise BackendConfigError(f"unknown {config.type} option(s): {', '.join(unknown)} "
                                 f"(known: {', '.join(known) or 'none'})")


def int_option(config: BackendConfig, key: str, default: int, low: int, high: int) -> int:
    value = whole_number(f"{config.type} {key}", config.options.get(key, default),
                         BackendConfigError)
    if not low <= value <= high:
        raise BackendConfigError(f"{config.type} {key} {value} is out of range ({low}-{high})")
    return value
