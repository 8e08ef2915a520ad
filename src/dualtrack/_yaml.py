"""Safe YAML loading that remembers where each value came from.

Every configuration error in dualtrack names file, line and field. PyYAML's
safe loader gives us the data; walking its node tree alongside gives us the
line of every mapping key and sequence item, keyed by its path in the
document (``("rules", 3, "when")``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import yaml

from .errors import ConfigError

FieldPath = Tuple[Union[str, int], ...]


class LocatedDocument:
    """YAML data plus the 1-based line of every field, by path."""

    def __init__(self, data: Any, lines: Dict[FieldPath, int], source: str) -> None:
        self.data = data
        self.source = source
        self._lines = lines

    def line(self, path: FieldPath) -> Optional[int]:
        """Line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return self._lines.get((), None)

    def error(self, path: FieldPath, message: str) -> ConfigError:
        return ConfigError(message, source=self.source, line=self.line(path), field=format_path(path))


def format_path(path: FieldPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _record_lines(node: yaml.Node, path: FieldPath, lines: Dict[FieldPath, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            child = path + (key,)
            lines[child] = key_node.start_mark.line + 1
            _record_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = path + (index,)
            lines[child] = item.start_mark.line + 1
            _record_lines(item, child, lines)


def loads(text: str, source: str = "<string>") -> LocatedDocument:
    """Parse YAML text safely (no Python object tags) with line tracking."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = err.problem or err.context or "invalid YAML"
        raise ConfigError(f"invalid YAML: {problem}", source=source, line=line) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML: {err}", source=source) from err
    finally:
        loader.dispose()
    lines: Dict[FieldPath, int] = {}
    if node is not None:
        _record_lines(node, (), lines)
    return LocatedDocument(data, lines, source)


def load(path: Union[str, Path]) -> LocatedDocument:
    """Read and parse a YAML file; unreadable files raise ``ConfigError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read file: {err}", source=str(path)) from err
    return loads(text, source=str(path))
