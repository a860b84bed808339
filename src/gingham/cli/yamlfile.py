"""Reading a YAML file a user gave us, with failures in one line (PyYAML's own text is a
multi-line dump with a caret under the spot)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from yaml.reader import ReaderError


class YamlFileError(ValueError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader refusing a key given twice in one mapping (PyYAML keeps the last one
    silently: `asNumber` twice would pass as whichever came second)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line "
                    f"{seen[key].start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep)


def load_yaml(path: str) -> object:
    """The document in `path`; YamlFileError `cannot read PATH: line L, column C: problem`."""
    text = _read(path)
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise YamlFileError(f"cannot read {path}: {_describe(err, text)}") from None


def load_yaml_documents(path: str) -> list[object]:
    """Every document of a multi-document YAML file (`-`: standard input), empty ones left
    out; YamlFileError as load_yaml's."""
    text = _read(path)
    try:
        return [doc for doc in yaml.load_all(text, Loader=_StrictLoader)
                if doc is not None]
    except yaml.YAMLError as err:
        raise YamlFileError(f"cannot read {source_name(path)}: {_describe(err, text)}") from None


def source_name(path: str) -> str:
    return "standard input" if path == "-" else path


def _read(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise YamlFileError(f"cannot read {source_name(path)}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise YamlFileError(f"cannot read {source_name(path)}: not UTF-8 text ({err.reason} "
                            f"at byte {err.start})") from None


def _describe(err: yaml.YAMLError, text: str) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        line, column = err.problem_mark.line, err.problem_mark.column
        what = f"{err.problem}" + (f" ({err.context})" if err.context else "")
    elif isinstance(err, ReaderError):  # a character YAML does not allow; only an offset
        line = text.count("\n", 0, err.position)
        column = err.position - (text.rfind("\n", 0, err.position) + 1)
        what = str(err).partition("\n")[0]
    else:
        return " ".join(str(err).split())
    return f"line {line + 1}, column {column + 1}: {what}"
