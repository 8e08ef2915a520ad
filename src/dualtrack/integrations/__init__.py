"""dualtrack inside the tools applications already run.

Each integration is an optional extra, imported on its own; ``import dualtrack``
never imports them, so an application without the extra loses nothing:

- :mod:`dualtrack.integrations.litellm` (``pip install 'dualtrack[litellm]'``):
  ``instrument(router, optimizer)`` records every LiteLLM call (``Router`` and
  ``litellm.completion`` alike) and routes each request of a model group that
  has local and API deployments the way the optimizer recommends;
- :mod:`dualtrack.integrations.langgraph` (``pip install 'dualtrack[langgraph]'``):
  node factories for a LangGraph ``StateGraph`` (route, run, complete) and a
  conditional-edge helper that branches on the recommended path.

Importing one without its extra raises an ``ImportError`` whose message is the
one line to run. The integrations use dualtrack's public API only (the
optimizer's request interface, ``dualtrack.router``); the layering puts them
above the router and below the simulation.
"""
