"""Reading a user's YAML file (data, hyp) with bounded cost, and errors that name the file.

``yaml.safe_load`` never runs code, but an alias bomb (``a: &a [x, x]``, ``b: &b [*a, *a]``, ...) is a few
lines that stand for billions of items: printing or walking the result hangs and eats memory. So the
composed document is measured as it would be expanded (aliases counted each time they are used) and
refused past a bound that no data or hyp file comes near; the file size is capped too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import yaml

# Largest YAML we read: data YAMLs with a download script are a few KB, the biggest names list (Objects365) ~10 KB.
MAX_YAML_BYTES = 1 << 20
# Most values (scalars, lists, mappings) a document may hold once aliases are expanded.
MAX_YAML_NODES = 100_000


def expanded_size(root: yaml.Node, limit: int) -> int:
    """Number of nodes of ``root`` with every alias expanded, counted up to ``limit`` (+1 past it) without
    expanding anything: each distinct node's size is computed once. A node containing itself counts as
    past the limit."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes and sizes[id(node)] >= 0:
            continue
        children = _children(node)
        if children_done:
            sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(child)] for child in children))
            continue
        if sizes.get(id(node)) == -1:  # reached again while its children are pending: a cycle
            return limit + 1
        sizes[id(node)] = -1
        stack.append((node, True))
        stack += [(child, False) for child in children if sizes.get(id(child), -1) < 0]
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def load_yaml_file(path: Union[str, Path]) -> Any:
    """The content of a YAML file (safe types only).

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file: too large, not UTF-8 text (e.g. a binary file), not valid YAML
            (with the line), or an alias bomb.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (or not a regular file)")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes is too large for a YAML settings file "
                         f"(limit {MAX_YAML_BYTES})")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file (a YAML file was expected)") from None
    if "\x00" in text:
        raise ValueError(f"{path}: not a text file (it holds NUL bytes; a YAML file was expected)")
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()  # aliases are shared nodes here: composing a bomb is cheap
        if root is None:
            return None
        if expanded_size(root, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise ValueError(f"{path}: more than {MAX_YAML_NODES} values once its aliases (*name) are expanded, "
                             "or a value containing itself: refused (a settings file needs far fewer)")
        return loader.construct_document(root)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a settings file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        reason = " ".join(str(getattr(error, "problem", None) or error).split())
        raise ValueError(f"{path}{where}: not valid YAML ({reason})") from None
    finally:
        loader.dispose()
