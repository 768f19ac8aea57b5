"""One source of defaults: options dataclasses declare each flag once; argparse is generated from them.

A field made with :func:`option` carries its help text, extra flag spellings (YOLOv5's aliases such as
``--img``) and any argparse settings; :func:`build_parser` turns the dataclass into train.py's, val.py's,
detect.py's or export.py's parser, and :func:`options_from_kwargs` gives ``run(**kwargs)`` the same
defaults and the same validation. :func:`cli_main` runs a CLI so that user errors print one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing
from collections.abc import Sequence
from typing import Any, Callable, Optional, TypeVar

import yaml

from utils.files import OutputWriteError

T = TypeVar("T")

# Set to 1 to see the full traceback of a user error instead of the one-line message.
TRACEBACK_ENV = "CBBL_TRACEBACK"
# Exit status of a user error (argparse uses 2 for bad flags too).
USER_ERROR_EXIT = 2
# Exit status after ctrl-C: 128 + SIGINT, as shells report an interrupted command.
INTERRUPTED_EXIT = 130


def option(default: Any, help: str = "", *, flags: Sequence[str] = (), cli: bool = True,
           aliases: Sequence[tuple[str, dict[str, Any]]] = (), group: str = "", **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also a CLI flag ``--field-name`` (plus ``flags``).

    ``aliases`` adds separate flags that write the same field (e.g. ``--adam`` storing ``"Adam"`` into
    ``optimizer``); ``argparse_kwargs`` (nargs, const, choices, type, metavar) go to ``add_argument``.
    ``cli=False`` keeps a field out of the parser (set from Python only); ``group`` lists the flag under that
    title in --help.
    """
    metadata = {"help": help, "flags": tuple(flags), "cli": cli, "aliases": tuple(aliases), "group": group,
                "argparse": argparse_kwargs}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(element type, is_sequence) of a hint such as int, Optional[float], tuple[int, ...]."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return (args[0] if args else str), True
    if origin is typing.Union:
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    return hint, False


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def build_parser(options_cls: type, description: str = "") -> argparse.ArgumentParser:
    """The argparse parser of an options dataclass: one flag per :func:`option` field, same defaults."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups: dict[str, Any] = {"": parser}
    hints = typing.get_type_hints(options_cls)
    for field in dataclasses.fields(options_cls):
        meta = field.metadata
        if not field.init or not meta.get("cli", False):
            continue
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        target = groups[meta["group"]]
        kwargs = {"dest": field.name, "help": meta["help"], **meta["argparse"]}
        default = _field_default(field)
        kwargs.setdefault("default", default)
        element, is_sequence = _base_type(hints[field.name])
        if element is bool and "action" not in kwargs:
            kwargs["action"] = argparse.BooleanOptionalAction if default is not False else "store_true"
        elif "action" not in kwargs:
            kwargs.setdefault("type", element if element in (int, float, str) else str)
            if is_sequence:
                kwargs.setdefault("nargs", "+")
        target.add_argument(f"--{field.name.replace('_', '-')}", *meta["flags"], **kwargs)
        for alias, alias_kwargs in meta["aliases"]:
            target.add_argument(alias, dest=field.name, default=argparse.SUPPRESS, **alias_kwargs)
    return parser


def override_fields(options_cls: type, names: dict[str, str], group: str) -> list[tuple[str, Any, Any]]:
    """``dataclasses.make_dataclass`` fields that override single settings of ``options_cls`` (whose fields carry
    the defaults): ``names`` maps each setting to its override's name; every override defaults to None (= keep
    the setting's value) and keeps the setting's help (with its default) and argparse settings, listed under
    ``group`` in --help."""
    hints = typing.get_type_hints(options_cls)
    found = []
    for field in dataclasses.fields(options_cls):
        if field.name in names:
            meta, default = field.metadata, _field_default(field)
            help_text = meta["help"] if default is None else f"{meta['help']} (default: {default})"
            found.append((names[field.name], Optional[hints[field.name]],
                          option(None, help_text, flags=meta["flags"], group=group, **meta["argparse"])))
    return found


def parse_into(options_cls: type[T], argv: Optional[Sequence[str]] = None, description: str = "") -> T:
    """Parse ``argv`` (None = sys.argv) with the generated parser and build the options."""
    return options_cls(**vars(build_parser(options_cls, description).parse_args(argv)))


def options_from_kwargs(options_cls: type[T], kwargs: dict[str, Any]) -> T:
    """``run(**kwargs)``'s options: the same fields and defaults as the CLI; unknown names are an error."""
    known = {field.name for field in dataclasses.fields(options_cls) if field.init}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; known: {sorted(known)}")
    return options_cls(**kwargs)


def _ignore_unraisable(unraisable: Any) -> None:
    """``sys.unraisablehook`` that prints nothing."""


def cli_main(main: Callable[[], Any], prog: str) -> None:
    """Run a CLI's ``main``: user errors (bad value, missing file, unreadable YAML, a failed write such as a full
    disk or a read-only folder) print one line ``prog: error: ...`` and exit 2; ctrl-C prints one line (what the
    interrupted work left, when it says) and exits 130; ``CBBL_TRACEBACK=1`` shows the traceback instead."""
    try:
        main()
    except KeyboardInterrupt as interrupt:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        # an object that ctrl-C caught mid-construction (a tqdm bar) fails in its finaliser at exit: not the news
        sys.unraisablehook = _ignore_unraisable
        logging.shutdown()
        print(f"{prog}: {' '.join(str(interrupt).split()) or 'interrupted'}", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OutputWriteError,
            yaml.YAMLError) as err:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        logging.shutdown()
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
