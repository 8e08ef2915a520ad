"""Which track a LiteLLM deployment or call is on: its tag, or else its provider and address.

A deployment says it outright with ``model_info: {"dualtrack_track": "local" | "api"}``.
Without the tag the track is inferred:

1. a provider that serves models on this machine is **local**: ``ollama/``,
   ``ollama_chat/``, ``hosted_vllm/``, ``llamafile/``, ``lm_studio/`` (the
   prefix of ``model``, or ``custom_llm_provider``);
2. an ``api_base`` on loopback (``localhost``, ``127.0.0.0/8``, ``::1``) is
   **local**, whatever the provider (a vLLM or llama.cpp server behind the
   ``openai/`` provider);
3. everything else is **api**.

Tag a deployment whose address says nothing about where it runs (a GPU box
on the LAN is "local" to you, but ``http://10.0.0.7`` does not say so).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Optional
from urllib.parse import urlsplit

from dualtrack.vocabulary import TRACKS

__all__ = ["LOCAL_PROVIDERS", "TRACK_KEY", "deployment_track", "infer_track", "is_loopback"]

TRACK_KEY = "dualtrack_track"
"""The ``model_info`` key that tags a deployment (and the ``metadata`` key that forces one call's track)."""

LOCAL_PROVIDERS = frozenset({"ollama", "ollama_chat", "hosted_vllm", "llamafile", "lm_studio"})
"""LiteLLM providers that serve a model on this machine."""


def is_loopback(url: Any) -> bool:
    """Whether ``url`` (``http://127.0.0.1:11434/v1``, ``localhost:8000``) points at this machine."""
    if not isinstance(url, str) or not url:
        return False
    host = urlsplit(url if "//" in url else "//" + url).hostname
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def infer_track(model: Any, *, provider: Any = None, api_base: Any = None) -> str:
    """The track of an untagged deployment or call: local provider or loopback address, else ``api``."""
    prefix = model.split("/", 1)[0] if isinstance(model, str) and "/" in model else None
    if prefix in LOCAL_PROVIDERS or provider in LOCAL_PROVIDERS or is_loopback(api_base):
        return "local"
    return "api"


def deployment_track(deployment: Mapping[str, Any]) -> str:
    """The track of one entry of a Router's ``model_list``: its tag, else :func:`infer_track`.

    A tag other than ``local`` or ``api`` is a ``ValueError`` naming the deployment.
    """
    info = deployment.get("model_info")
    tag = info.get(TRACK_KEY) if isinstance(info, Mapping) else None
    params = deployment.get("litellm_params")
    params = params if isinstance(params, Mapping) else {}
    if tag is not None:
        if tag not in TRACKS:
            raise ValueError(f"deployment {_describe(deployment, params)}: model_info.{TRACK_KEY} must be "
                             f"'local' or 'api', got {tag!r}")
        return str(tag)
    return infer_track(params.get("model"), provider=params.get("custom_llm_provider"),
                       api_base=params.get("api_base"))


def _describe(deployment: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    name: Optional[Any] = deployment.get("model_name")
    return f"{name!r} ({params.get('model')!r})"
