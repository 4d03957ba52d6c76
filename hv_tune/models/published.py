"""The transformer config a plan is built from: a folder on disk, a published checkpoint's known
config, or (once) the hub.

The plan needs only the transformer's ``config.json`` (layer sizes), never weights. Each family keeps
the configs of its published checkpoints as facts (``models/<family>/plan.py``), so ``plan`` answers
for the shipped configs before anything is downloaded and without a network. Order:

1. ``model.path`` is a folder: its ``transformer/config.json`` (a folder on disk always wins);
2. ``model.path`` is a hub id with a known config and no ``model.revision``: that config;
3. otherwise the hub: one reachability check of the endpoint (a TCP connection, a few seconds at
   most) and, when it answers, one download of the config. huggingface_hub retries an unreachable
   host five times with back-off (~25 s) and then reports a missing file; the check fails once,
   at once, and says the hub could not be reached.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hv_tune.errors import ConfigError, HubUnreachable

#: seconds the reachability check waits for the hub's endpoint
CONNECT_TIMEOUT_S = 5.0


def transformer_config(
    cls: Any, model_path: str | None, subfolder: str, published: Mapping[str, Mapping[str, Any]],
    revision: str | None = None,
) -> dict[str, Any]:
    """The transformer config of ``model_path`` as ``cls.from_config`` takes it.

    Args:
        cls: the diffusers model class (its ``load_config`` reads folders and the hub cache).
        model_path: a folder, a hub id, or None for the class's defaults (the full-size model).
        subfolder: the transformer's folder in a model folder (``transformer``).
        published: hub id -> config of the family's published checkpoints.
        revision: ``model.revision``; the known configs describe the default branch only.

    Raises:
        HubUnreachable: the config must come from the hub and the endpoint does not answer
            (or ``HF_HUB_OFFLINE`` is set) and the hub cache does not hold it.
        ConfigError: the hub answered but has no such repository or file.
    """
    if model_path is None:
        return {}
    if Path(model_path).is_dir():
        return dict(cls.load_config(model_path, subfolder=subfolder))
    if revision is None and model_path in published:
        return dict(published[model_path])
    return _from_hub(model_path, f"{subfolder}/config.json", revision)


def _from_hub(repo: str, filename: str, revision: str | None) -> dict[str, Any]:
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    cached = try_to_load_from_cache(repo, filename, revision=revision)
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text())
    where = f"config key 'model.path': {repo!r} is not a local folder and its {filename} is not in the hub cache"
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise HubUnreachable(f"{where}; the hub could not be reached: HF_HUB_OFFLINE is set. Point model.path at "
                             "a diffusers-format folder, or download it first (`hf download {repo}`)".format(repo=repo))
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    reason = _unreachable(endpoint)
    if reason:
        raise HubUnreachable(f"{where}; the hub could not be reached ({endpoint}: {reason}). Point "
                             f"model.path at a diffusers-format folder, or download it first (`hf download {repo}`)")
    try:
        path = hf_hub_download(repo, filename, revision=revision)
    except RepositoryNotFoundError as e:
        raise ConfigError(f"config key 'model.path': no hub repository {repo!r} (or it is private): {e}") from e
    except EntryNotFoundError as e:
        raise ConfigError(f"config key 'model.path': hub repository {repo!r} has no {filename}; is it a "
                          f"diffusers-format model?") from e
    except (HfHubHTTPError, OSError) as e:
        raise HubUnreachable(f"{where}; downloading it failed: {e}") from e
    return json.loads(Path(path).read_text())


def _unreachable(endpoint: str) -> str | None:
    """Why the hub's endpoint cannot be reached (name lookup or TCP connect), or None when it answers."""
    url = urlparse(endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return None  # through a proxy the host is not ours to resolve: let the download try
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as e:
        return str(e) or type(e).__name__
