"""The text of a prompt, as the optimizer classifies it: shared by the integrations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, List


def prompt_text(prompt: Any) -> str:
    """A string as is; chat messages as their text contents, one per line (multimodal parts: their text)."""
    if isinstance(prompt, str):
        return prompt
    parts: List[str] = []
    if isinstance(prompt, (list, tuple)):
        for message in prompt:
            # dict first: a Mapping isinstance check costs more than the rest of the loop (hot path)
            content = message.get("content") if type(message) is dict or isinstance(message, Mapping) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image_url", ...}]
                parts.extend(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return parts[0] if len(parts) == 1 else "\n".join(parts)
