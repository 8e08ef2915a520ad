"""Backends: the models a router calls, behind one small blocking interface.

This module gathers the public names of the backend modules, so the import
path ``dualtrack.router.backends`` keeps working::

    from dualtrack.router.backends import Backend, BackendError, Completion, OpenAICompatibleBackend

Where each lives:

- ``dualtrack.router.backend``: the contract, :class:`Completion`,
  :class:`BackendError` (its ``kind`` one of :data:`KINDS`), the
  :class:`Backend` protocol, ``Prompt`` and ``QualityScorer``;
- ``dualtrack.router.openai_backend``: :class:`OpenAICompatibleBackend`,
  ``POST /v1/chat/completions`` on Ollama, the llama.cpp server, vLLM or a
  hosted OpenAI-compatible API, streaming or not;
- ``dualtrack.router.callable_backend``: :class:`CallableBackend`, wrapping a
  plain function, for an application that already has a client;
- ``dualtrack.router.fake_backend``: :class:`FakeBackend`, a simulated model
  in real time (latency, errors, quality) for tests and the real-time demo.
"""

from __future__ import annotations

# DEFAULT_MAX_RESPONSE_BYTES and estimate_tokens were public here before the split, outside __all__.
from .._http import DEFAULT_MAX_RESPONSE_BYTES as DEFAULT_MAX_RESPONSE_BYTES
from ..vocabulary import TRACKS
from .backend import KINDS, Backend, BackendError, Completion, Prompt, QualityScorer
from .backend import estimate_tokens as estimate_tokens
from .callable_backend import CallableBackend
from .fake_backend import FakeBackend
from .openai_backend import OpenAICompatibleBackend

__all__ = [
    "KINDS",
    "TRACKS",
    "Backend",
    "BackendError",
    "CallableBackend",
    "Completion",
    "FakeBackend",
    "OpenAICompatibleBackend",
    "Prompt",
    "QualityScorer",
]
