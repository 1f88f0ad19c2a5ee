"""Live config reload: on SIGHUP, and when the config file or a file it names changes."""

from __future__ import annotations

import asyncio
import logging
import os

from sidecar.config import Config, ConfigError, load
from sidecar.metrics import Metrics
from sidecar.scheduler import Scheduler

logger = logging.getLogger(__name__)

# (resolved path, inode, modification time in ns, size), or None for a missing file.
Fingerprint = tuple[str, int, int, int] | None


def fingerprint(path: str) -> Fingerprint:
    """Identify the current content of `path` without reading it.

    Kubernetes updates a mounted ConfigMap or Secret by pointing the `..data` symlink at a
    new directory, so the path's target changes while the path itself stays; `realpath`
    and `stat`, which follow symlinks, both see that.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)


class ConfigReloader:
    """Applies a changed config to a running scheduler, or keeps the old one if invalid.

    `run()` polls the files every `server.watch_interval` seconds; `request()` (SIGHUP)
    reloads at the next moment regardless of changes.
    """

    def __init__(
        self,
        config: Config,
        scheduler: Scheduler,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self._scheduler = scheduler
        self._metrics = metrics
        self._wanted = asyncio.Event()
        self._seen = self._fingerprints(config)
        # Number of reloads that were applied; tests wait on it.
        self.generation = 0

    @staticmethod
    def _fingerprints(config: Config) -> dict[str, Fingerprint]:
        return {path: fingerprint(path) for path in config.files()}

    def can_reload(self) -> bool:
        """Return True when the config came from a file that exists, so it can be read again."""
        return os.path.isfile(self.config.source)

    def request(self) -> None:
        """Ask for a reload, e.g. on SIGHUP."""
        self._wanted.set()

    async def run(self) -> None:
        """Reload whenever a watched file changes or a reload is requested. Runs until cancelled."""
        interval = self.config.server.watch_interval
        while True:
            if interval > 0:
                try:
                    await asyncio.wait_for(self._wanted.wait(), timeout=interval)
                except TimeoutError:
                    pass
            else:
                await self._wanted.wait()
            requested = self._wanted.is_set()
            self._wanted.clear()
            if requested or self._fingerprints(self.config) != self._seen:
                await self.reload("signal" if requested else "file change")

    async def reload(self, cause: str) -> bool:
        """Read the config file again and apply it; return False if it was invalid."""
        path = self.config.source
        # Record what was read before reading, so a change made during the reload is seen
        # at the next poll.
        self._seen = self._fingerprints(self.config)
        try:
            new = load(path)
        except ConfigError as exc:
            self._metrics.config_reload_failures.inc()
            logger.error(
                "config reload rejected; the previous config stays in force",
                extra={"config": path, "cause": cause, "problems": exc.problems},
            )
            return False

        if new.server != self.config.server:
            logger.warning(
                "server settings changed; restart the sidecar to apply them",
                extra={"config": path},
            )
            # Keep the server section in force, so the watch interval stays consistent.
            new = Config(server=self.config.server, checks=new.checks, source=new.source)
        change = await self._scheduler.apply(new.checks)
        self.config = new
        self._seen = self._fingerprints(new)
        self.generation += 1
        logger.info(
            "config reloaded",
            extra={
                "config": path,
                "cause": cause,
                "added": list(change.added),
                "changed": list(change.changed),
                "removed": list(change.removed),
                "checks": len(new.checks),
            },
        )
        return True
