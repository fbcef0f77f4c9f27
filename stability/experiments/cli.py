"""What every command-line script shares: a one-line-error parser, value types, presets
and turning parsed arguments into a config. Imports nothing heavy, so ``--help`` is instant.

Each value type raises :class:`argparse.ArgumentTypeError`, so argparse prints a one-line error
naming the flag and exits with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def show_value(value: Any) -> str:
    """A default as a user types it: ``a, b`` for a tuple or list, ``str`` otherwise."""
    if isinstance(value, (tuple, list)):
        return ", ".join(show_value(item) for item in value)
    return str(value)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help, once, as a user would type ``X``.

    Nothing is appended when the help already speaks of its default, when the default is
    None, False or suppressed (a flag left out), or for positionals; a tuple default is
    shown comma-separated, the way :func:`comma_list` reads it.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
            or (action.nargs == 0 and default is True)  # e.g. a store_false flag
        ):
            return text
        return f"{text} (default: {show_value(default).replace('%', '%%')})"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2) and whose
    help shows each default once (:class:`DefaultsHelpFormatter`; a script asking for
    argparse's ``ArgumentDefaultsHelpFormatter`` gets it too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        formatter = kwargs.get("formatter_class", argparse.HelpFormatter)
        if formatter in (argparse.HelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
            kwargs["formatter_class"] = DefaultsHelpFormatter
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(text: str, cast: Callable[[str], float], minimum: float, strict: bool, what: str):
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    too_small = value <= minimum if strict else value < minimum
    if too_small or (isinstance(value, float) and not math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _number(text, int, 0, True, "a positive integer")


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _number(text, int, 0, False, "a non-negative integer")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number(text, float, 0.0, True, "a positive number")


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    return _number(text, float, 0.0, False, "a non-negative number")


def comma_list(item: Callable[[str], object]) -> Callable[[str], tuple]:
    """A comma-separated, non-empty list whose items are parsed by ``item``."""

    def parse(text: str) -> tuple:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return tuple(item(part) for part in parts)

    return parse


def one_of(choices: Sequence[str], what: str) -> Callable[[str], str]:
    """A string among ``choices`` (the error lists them)."""

    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {text!r}; choose from {', '.join(choices)}"
            )
        return text

    return parse


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def parse_with_preset(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    presets: Mapping[str, Mapping[str, Any]],
) -> argparse.Namespace:
    """Parse ``argv`` where ``--preset NAME`` supplies the values of every flag not given.

    The parser must have a ``--preset`` option whose choices are ``presets``' keys. argparse
    itself decides which flags were given (abbreviations included): the preset's values are
    put on the namespace first, and argparse only fills defaults for what is still missing
    and overrides what the user typed.
    """
    chosen = parser.parse_args(argv).preset
    return parser.parse_args(argv, namespace=argparse.Namespace(**presets[chosen]))


def config_from_args(config_type: type, args: argparse.Namespace, **values: Any) -> Any:
    """An instance of the dataclass ``config_type`` from the parsed arguments.

    Every field whose name is an attribute of ``args`` with a value other than None takes
    that value (a flag left out, default None, keeps the config's default, so the
    dataclass is the one place defaults are written); ``values`` (computed by the script)
    take precedence.
    """
    names = {f.name for f in dataclasses.fields(config_type)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"{config_type.__name__} has no field(s) {unknown}")
    return config_type(**{**given, **values})


def one_line(error: BaseException) -> str:
    """An exception's message on one line, for ``prog: error: ...`` output."""
    return " ".join(str(error).split())


def _dataset(text: str) -> str:
    """A data set name, canonicalised by the data code (imported only when a value is given)."""
    from stability.paper.data import canonical_name

    try:
        return canonical_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _existing_folder(text: str) -> Path:
    """A ``--data-dir``: it must be an existing folder, or no other data is searched."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} does not exist or is not a directory")
    return path


def add_data_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--dataset --data-dir --download --image-size --subset`` to a script's parser.

    Building the parser imports no torch (``--help`` stays instant); the flag names match
    the ones the "data not found" messages recommend.
    """
    from stability.paper.names import DATA_ENV_VAR, DATASETS, SYSTEM_FASHION_MNIST

    parser.add_argument(
        "--dataset", type=_dataset, help=f"one of {', '.join(DATASETS)} (default fashion-mnist)"
    )
    parser.add_argument(
        "--data-dir",
        type=_existing_folder,
        help=f"searched first (must exist); then ${DATA_ENV_VAR}, the user cache, "
        f"and for Fashion-MNIST {SYSTEM_FASHION_MNIST}",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="let torchvision download Fashion-MNIST/CIFAR-10 if not found",
    )
    parser.add_argument(
        "--image-size", type=positive_int, help="output side (default 28; 224 for ImageNet)"
    )
    parser.add_argument(
        "--subset", type=positive_int, help="keep the first N samples of each split"
    )
    return parser  # fmt: skip


def run_experiment(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    presets: Mapping[str, Mapping[str, Any]],
    config_type: type,
    run: Callable[[Any], Any],
    report: Callable[[Any], None],
) -> int:
    """The ``main`` of an experiment script: parse (``--preset`` applied), make the config,
    ``run`` it, ``report`` the result.

    Returns:
        0; or argparse's status for ``--help`` and usage errors (already one line); or 2
        after a one-line ``PROG: error: ...`` on stderr for a ValueError, OSError or
        RuntimeError of the run (a bad value, an existing output, missing data).
    """
    try:
        args = parse_with_preset(parser, argv, presets)
    except SystemExit as done:  # --help, or a usage error already printed on one line
        return int(done.code or 0)
    try:
        result = run(config_from_args(config_type, args))
    except (ValueError, OSError, RuntimeError) as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    report(result)
    return 0


def print_report(result: Any) -> None:
    """Print an experiment result's Markdown ``report``, its time and its folder."""
    print()
    print(result.report)
    print(f"done in {result.seconds:.0f} s; results in {result.out}/")
