#!/usr/bin/env python3
"""dualtrack in a LangGraph graph: route, branch on the recommended path, run, record.

The graph: ``route`` asks the optimizer and records the request's start;
a conditional edge (``branch_on_path``) sends it to ``local``, ``api`` or
``both`` (a race); ``complete`` records the result, once, errors included.
The tracks are OpenAI-compatible servers (dualtrack's backends); with
--fake, simulated models instead.

    ollama serve && OPENAI_API_KEY=... python examples/langgraph_graph.py
    python examples/langgraph_graph.py --fake

URLs: --local-url / DUALTRACK_LOCAL_URL (default http://127.0.0.1:11434/v1),
--api-url / DUALTRACK_API_URL (default https://api.openai.com/v1).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Tuple

from langgraph.graph import END, START, StateGraph

from dualtrack import DualTrackOptimizer, OptimizationConfig
from dualtrack.integrations.langgraph import DualTrackState, branch_on_path, complete_node, route_node, run_node
from dualtrack.router.backends import FakeBackend, OpenAICompatibleBackend

QUERIES = ("What is the capital of France?", "Explain the CAP theorem in two sentences.")


def backends(args: argparse.Namespace) -> Tuple[Any, Any]:
    if args.fake:
        return (FakeBackend("local", latency=0.05, quality=0.8, text="Paris (local)."),
                FakeBackend("api", latency=0.1, quality=0.9, text="Paris (API)."))
    key_env = args.api_key_env if os.environ.get(args.api_key_env) else None
    return (OpenAICompatibleBackend(args.local_url, args.local_model, track="local"),
            OpenAICompatibleBackend(args.api_url, args.api_model, track="api", api_key_env=key_env))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local-url", default=os.environ.get("DUALTRACK_LOCAL_URL", "http://127.0.0.1:11434/v1"))
    parser.add_argument("--local-model", default="llama3.1:8b")
    parser.add_argument("--api-url", default=os.environ.get("DUALTRACK_API_URL", "https://api.openai.com/v1"))
    parser.add_argument("--api-model", default="gpt-4o-mini")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--fake", action="store_true", help="simulated models, no server")
    args = parser.parse_args()

    local, api = backends(args)
    optimizer = DualTrackOptimizer(OptimizationConfig(strategy="adaptive"))
    graph = StateGraph(DualTrackState)
    graph.add_node("route", route_node(optimizer))
    graph.add_node("local", run_node({"local": local, "api": api}, optimizer=optimizer))  # api: the fallback
    graph.add_node("api", run_node({"api": api, "local": local}, optimizer=optimizer))
    graph.add_node("both", run_node({"local": local, "api": api}, optimizer=optimizer))
    graph.add_node("complete", complete_node(optimizer))
    graph.add_edge(START, "route")
    graph.add_conditional_edges("route", branch_on_path({"local": "local", "api": "api", "parallel": "both"}))
    for node in ("local", "api", "both"):
        graph.add_edge(node, "complete")
    graph.add_edge("complete", END)
    app = graph.compile()

    for i in range(args.requests):
        state = app.invoke({"query": QUERIES[i % len(QUERIES)]})
        plan = state["dualtrack"]
        print(f"{plan['path']:>8} -> {plan.get('track_used') or '-':<5} "
              f"{state['answer'] if state['answer'] is not None else 'failed: ' + str(state['error'])}")
    for path, summary in sorted(optimizer.get_optimization_status()["metrics"].get("by_path", {}).items()):
        print(f"{path}: {summary['count']} calls recorded")


if __name__ == "__main__":
    main()
