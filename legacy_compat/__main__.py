"""``python -m legacy_compat``: run an unmodified fgbuster script on legacy_compat.

Usage::

    python -m legacy_compat [--force] script.py [args ...]
    python -m legacy_compat --compare [--rtol R] [--atol A] [--keep DIR] script.py [args ...]

The first form runs ``script.py`` as ``__main__`` (``sys.argv == ['script.py', args...]``)
with every ``import fgbuster`` / ``fgbuster.<module>`` resolved to legacy_compat. When a real
fgbuster is installed it refuses unless ``--force`` is given. The second form runs the script
on the real fgbuster and on legacy_compat and compares the results of every public call
(see ``legacy_compat._compare``); it exits 0 when all agree, 1 beyond the tolerance, 2 when
a run fails.
"""

from __future__ import annotations

import argparse
import os
import sys

from ._compare import EXIT_RUN_FAILED, compare_main, run_script


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m legacy_compat",
        description="Run an unmodified fgbuster script on legacy_compat (fgjax), or compare "
        "it against a real fgbuster install.",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="alias fgbuster to legacy_compat even when a real fgbuster is installed",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run the script on the real fgbuster and on legacy_compat; report differences",
    )
    parser.add_argument(
        "--rtol",
        type=float,
        default=1e-5,
        help="--compare: largest accepted |difference| / max|fgbuster value| per field "
        "(default 1e-5)",
    )
    parser.add_argument(
        "--atol", type=float, default=0.0, help="--compare: absolute tolerance (default 0)"
    )
    parser.add_argument("--keep", metavar="DIR", help="--compare: keep the recordings in DIR")
    parser.add_argument("script", help="the fgbuster script to run")
    parser.add_argument("args", nargs="*", help="arguments of the script, passed verbatim")
    return parser


_TAKES_VALUE = ("--rtol", "--atol", "--keep")


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the script: our options before it, the script's arguments (verbatim, as
    ``python script.py ARGS`` passes them, ``--`` included) after it."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return argv[: i + 2], argv[i + 2 :]
        if not arg.startswith("-") or arg == "-":
            return argv[: i + 1], argv[i + 1 :]
        i += 2 if arg in _TAKES_VALUE else 1
    return argv, []


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    ours, script_args = _split(list(sys.argv[1:] if argv is None else argv))
    opts = _parser().parse_args(ours)
    opts.args = script_args
    if opts.compare:
        if opts.force:
            sys.stderr.write("python -m legacy_compat: --force has no effect with --compare\n")
        if opts.rtol < 0 or opts.atol < 0:
            sys.stderr.write("python -m legacy_compat: --rtol and --atol must be >= 0\n")
            return EXIT_RUN_FAILED
        return compare_main(opts.script, opts.args, rtol=opts.rtol, atol=opts.atol, keep=opts.keep)

    from . import _alias

    spec = _alias._real_fgbuster_spec()
    if spec is not None and not opts.force:
        sys.stderr.write(
            f"python -m legacy_compat: a real fgbuster is installed ({spec.origin}); pass "
            "--force to run the script on legacy_compat anyway, or run it with plain "
            "`python` to use fgbuster.\n"
        )
        return EXIT_RUN_FAILED
    if not os.path.isfile(opts.script):
        sys.stderr.write(f"python -m legacy_compat: can't open file {opts.script!r}\n")
        return EXIT_RUN_FAILED
    _alias.alias_fgbuster(force=opts.force)
    run_script(opts.script, opts.args, replace_first_path=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
