"""Safe YAML loading that remembers where each value came from.

Every configuration error in dualtrack names file, line and field. PyYAML's
safe loader gives us the data; walking its node tree alongside gives us the
line of every mapping key and sequence item, keyed by its path in the
document (``("rules", 3, "when")``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Set, Tuple, Union

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


def _record_lines(node: yaml.Node, path: FieldPath, lines: Dict[FieldPath, int],
                  seen: Optional[Set[int]] = None) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    # An alias is the same node object as its anchor: walk each collection
    # node once, or nested aliases ("billion laughs") make this exponential.
    # Fields below an alias take the alias's line (line() falls back to it).
    seen = set() if seen is None else seen
    if isinstance(node, yaml.CollectionNode):
        if id(node) in seen:
            return
        seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            child = path + (key,)
            lines[child] = key_node.start_mark.line + 1
            _record_lines(value_node, child, lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = path + (index,)
            lines[child] = item.start_mark.line + 1
            _record_lines(item, child, lines, seen)


def loads(text: str, source: str = "<string>") -> LocatedDocument:
    """Parse YAML text safely (no Python object tags) with line tracking."""
    loader: Optional[yaml.SafeLoader] = None
    try:
        loader = yaml.SafeLoader(text)  # the reader refuses NUL and other control characters here
        node = loader.get_single_node()
        if node is not None:
            _check_integers(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = err.problem or err.context or "invalid YAML"
        raise ConfigError(f"invalid YAML: {problem}", source=source, line=line) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML: {err}", source=source) from err
    except RecursionError as err:
        raise ConfigError("invalid YAML: nested too deeply", source=source) from err
    except (ValueError, OverflowError, TypeError) as err:
        # The safe constructors raise plain errors for scalars they cannot
        # build: 2020-13-45 (a timestamp by its shape), !!int abc, an integer
        # of more than 4300 digits. A bad file, not a crash of its reader.
        raise ConfigError(f"invalid YAML: {err}", source=source) from err
    finally:
        if loader is not None:
            loader.dispose()
    lines: Dict[FieldPath, int] = {}
    if node is not None:
        try:
            expanded = _expanded_size(node, {})
            _record_lines(node, (), lines)
        except RecursionError as err:  # pragma: no cover - composing fails first
            raise ConfigError("invalid YAML: nested too deeply", source=source) from err
        if expanded > MAX_EXPANDED_NODES:
            # Everything downstream (schema validation, error messages) walks
            # the data with aliases expanded: 20 lines of nested aliases are
            # 10^8 values. No configuration here needs anything near this.
            raise ConfigError(f"invalid YAML: aliases expand the document to {expanded} values "
                              f"(at most {MAX_EXPANDED_NODES})", source=source)
    return LocatedDocument(data, lines, source)


#: The most values a document may hold once its aliases are expanded.
MAX_EXPANDED_NODES = 100_000
#: The longest integer literal accepted. Python refuses to print integers of
#: more than 4300 digits, so a 5000-digit hex literal (which int() accepts)
#: would break every error message that shows the value.
MAX_INTEGER_CHARS = 100


def _check_integers(root: yaml.Node) -> None:
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INTEGER_CHARS:
                raise yaml.MarkedYAMLError(problem=f"an integer of {len(node.value)} characters "
                                                   f"(at most {MAX_INTEGER_CHARS})",
                                           problem_mark=node.start_mark)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _expanded_size(node: yaml.Node, memo: Dict[int, int]) -> int:
    """Number of nodes with aliases expanded, in time linear in the real nodes."""
    key = id(node)
    if key in memo:
        return memo[key]
    size = 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            size += _expanded_size(key_node, memo) + _expanded_size(value_node, memo)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            size += _expanded_size(item, memo)
    memo[key] = size
    return size


def load(path: Union[str, Path]) -> LocatedDocument:
    """Read and parse a YAML file; unreadable files raise ``ConfigError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read file: {err}", source=str(path)) from err
    return loads(text, source=str(path))
