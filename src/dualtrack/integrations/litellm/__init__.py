"""dualtrack inside LiteLLM (``pip install 'dualtrack[litellm]'``)::

    from litellm import Router
    from dualtrack import DualTrackOptimizer, OptimizationConfig
    from dualtrack.integrations.litellm import instrument

    router = Router(model_list=[
        {"model_name": "chat", "litellm_params": {"model": "ollama/llama3.1:8b"}},     # local (inferred)
        {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o-mini"},
         "model_info": {"dualtrack_track": "api"}},                                       # or tagged
    ])
    optimizer = DualTrackOptimizer(OptimizationConfig(strategy="adaptive"))
    dualtrack = instrument(router, optimizer)
    router.completion(model="chat", messages=[{"role": "user", "content": "hi"}])

What it does, in three parts:

1. :mod:`.tracks`: each deployment's track, from its ``model_info`` tag or
   inferred from its provider and ``api_base``;
2. :mod:`.recorder`: a ``CustomLogger`` that records every LiteLLM call
   (Router and ``litellm.completion``) through the optimizer, plus time to
   first token, retries and fallbacks;
3. :mod:`.routing`: within a model group with deployments on both tracks,
   the track of each request follows the optimizer's recommendation, its
   retry goes to the other track, its timeout is the recommended one;
   :meth:`DualTrackLiteLLM.acompletion` races both tracks for a ``parallel``
   recommendation and, with ``instrument(..., hedge=HedgePolicy())``, hedges
   a slow single-track call on the other track.

Set ``LITELLM_LOCAL_MODEL_COST_MAP=True`` on machines without Internet
access: LiteLLM otherwise fetches its price list from GitHub when imported.
docs/integrations.md has the details and the limits.
"""

from __future__ import annotations

from .._extras import missing_extra

try:
    import litellm  # noqa: F401  (the check that the extra is installed)
except ImportError as _err:
    raise missing_extra("litellm", _err) from None

from .handle import ROUTING_MODES, DualTrackLiteLLM, instrument  # noqa: E402
from .recorder import CONTEXT_KEY, DualTrackRecorder, LiteLLMMetrics, outcome_of  # noqa: E402
from .routing import DualTrackFilter, DualTrackStrategy  # noqa: E402
from .tracks import LOCAL_PROVIDERS, TRACK_KEY, deployment_track, infer_track, is_loopback  # noqa: E402

__all__ = [
    "CONTEXT_KEY",
    "LOCAL_PROVIDERS",
    "ROUTING_MODES",
    "TRACK_KEY",
    "DualTrackFilter",
    "DualTrackLiteLLM",
    "DualTrackRecorder",
    "DualTrackStrategy",
    "LiteLLMMetrics",
    "deployment_track",
    "infer_track",
    "instrument",
    "is_loopback",
    "outcome_of",
]
