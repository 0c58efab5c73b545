"""Config reload for a running `pdscaler serve`: on SIGHUP, and when the file's content changes
(Kubernetes updates a mounted ConfigMap by swapping a symlink; no signal is sent).

A file that does not validate changes nothing: the error (pydantic's path and value) is logged,
`pdscaler_config_reloads_total{result="invalid"}` counts it, and the old config keeps running. A
valid one replaces the engine and the source between two polls; roles that persist keep their
targets, and the gRPC answers switch to the new graphs at once.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

from scaler.config import ConfigError, ScalerConfig, load_config

log = logging.getLogger("pdscaler.reload")


class ConfigReloader:
    def __init__(self, path: str | Path, current: ScalerConfig, apply: Callable[[ScalerConfig], None],
                 count: Callable[[str], None] | None = None) -> None:
        self.path, self.current, self.apply, self.count = Path(path), current, apply, count
        self.load: Callable[[Path], ScalerConfig] = load_config  # the CLI wraps it to re-apply overrides
        self._digest = self._read_digest()

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def changed(self) -> bool:
        return self._read_digest() not in (None, self._digest)

    def reload(self, reason: str = "signal") -> bool:
        """Validate the file and apply it; True when the new config runs."""
        self._digest = self._read_digest()
        try:
            config = self.load(self.path)
        except ConfigError as e:
            log.error("config reload (%s) rejected, keeping the running config: %s", reason, e)
            self._count("invalid")
            return False
        if config == self.current:
            log.info("config reload (%s): no change", reason)
            self._count("unchanged")
            return True
        try:
            self.apply(config)
        except Exception as e:  # e.g. a source that cannot be built: keep the old one running
            log.error("config reload (%s) failed to apply, keeping the running config: %s", reason, e)
            self._count("failed")
            return False
        self.current = config
        log.info("config reloaded (%s): graphs %s", reason, ", ".join(config.graphs))
        self._count("applied")
        return True

    def check(self) -> bool | None:
        """Reload when the file's content changed since the last (re)load; None when it did not."""
        return self.reload("file changed") if self.changed() else None

    def _count(self, result: str) -> None:
        if self.count is not None:
            self.count(result)
