"""The ports a picker would listen on, checked before anything listens.

`serve`, `envoy-config` and `check-config` must describe the same processes, so all three run
this one check."""

from __future__ import annotations

from picker.config import PickerConfig
from picker.errors import ConfigError

__all__ = ["check_ports"]


def check_ports(config: PickerConfig, workers: int, authz_port: int | None) -> None:
    """Ports that would collide, and what `--workers N` cannot do, refused before anything
    listens (and by envoy-config and check-config, which must describe the same processes).
    With `--workers N` process i listens on each port + i; `authz_port`: --mode authz."""
    from picker.processes.group import check_group_config

    count, extproc, health = workers, config.extproc.port, config.extproc.health_port
    authz = authz_port is not None
    if count > 1 and (not extproc or (authz and not authz_port) or health == 0):
        raise ConfigError("extproc.port", "--workers gives process i the port extproc.port + "
                          "i (and --authz-port + i, extproc.health_port + i): set ports, not 0")
    each = f" with --workers {count} (process i listens on port + i)" if count > 1 else ""
    ranges = [("extproc.port", extproc)] + ([("--authz-port", authz_port or 0)] if authz else [])
    ranges += [("extproc.health_port", health)] if health is not None else []
    taken: dict[int, str] = {}
    for key, first in ranges:
        last = first + count - 1
        if last > 65535:
            raise ConfigError(key, f"{first}-{last} with --workers {count} runs past port 65535")
        for port in range(first, last + 1) if first else ():  # 0: any free port
            if port in taken:
                clash = (f"{first}-{last} overlaps {taken[port]}'s ports{each}" if count > 1
                         else f"{first} is also {taken[port]}")
                raise ConfigError(key, f"{clash}: move one of them")
            taken[port] = key
    admin = config.admin.port
    if config.admin.enabled is not False and admin in taken:
        clash = (f"is one of {taken[admin]}'s ports{each}" if count > 1
                 else f"is also {taken[admin]}")
        raise ConfigError("admin.port", f"{admin} {clash}: move admin.port or {taken[admin]}")
    if count > 1:
        check_group_config(config)
