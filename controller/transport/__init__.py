"""Connections to a device's agent: JSON lines over a local subprocess or an SSH exec channel.

One API (:class:`Connection`), two backends, one job per module:

* :mod:`.base`: :class:`Connection`: requests matched to responses by id, drops and timeouts,
  content-addressed artifact upload (the device computes the sha256 before the rename).
* :mod:`.local`: :class:`LocalConnection`, the agent as a subprocess (the built-in ``local``
  device); artifacts are copied into its store.
* :mod:`.ssh`: :class:`SSHConnection`, the agent behind an SSH exec channel (paramiko, key
  authentication only, retries, keepalives); :class:`SSHSession`, exec and SFTP without an agent
  (also what ``nnflash agent install`` uses).
* :mod:`.hostkeys`: the host-key policy (known_hosts read only, new keys pinned on request,
  changed keys always refused) and fingerprints.
* :mod:`.factory`: :func:`make_connection` / :func:`connect` / :func:`probe` by device kind.
"""

from __future__ import annotations

from nnflash.controller.transport.base import ArtifactPut, Connection
from nnflash.controller.transport.factory import connect, make_connection, probe
from nnflash.controller.transport.hostkeys import default_known_hosts_path, default_pinned_hosts_path, fingerprint
from nnflash.controller.transport.local import LocalConnection
from nnflash.controller.transport.ssh import CommandResult, SSHConnection, SSHSession

__all__ = [
    "Connection",
    "LocalConnection",
    "SSHConnection",
    "SSHSession",
    "CommandResult",
    "ArtifactPut",
    "connect",
    "probe",
    "make_connection",
    "fingerprint",
    "default_known_hosts_path",
    "default_pinned_hosts_path",
]
