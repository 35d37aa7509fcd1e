"""Command-line interface: ``python -m unetlab {trace,params,train,checkpoints}``.

Each subcommand lives in the module that does the work; that module defines
``cli_add_arguments(parser)`` and ``cli_run(args) -> int``. This file only wires
them together, and imports only the module of the command that runs, so
``python -m unetlab --help`` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS = {
    "trace": ("unetlab.trace_command", "print the shape table of a model (simple, sd15, sd21, sdxl, tiny)"),
    "params": ("unetlab.sd.count", "parameter counts of a Stable Diffusion UNet, by part"),
    "train": ("unetlab.train", "train one of the course's small models and write its checkpoint into data/"),
    "checkpoints": ("unetlab.checkpoints", "list the shipped checkpoints, verify their sha256"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add that command's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m unetlab",
        description="unetlab: from the textbook UNet to the Stable Diffusion UNet (中文 / English course).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if name == command:
            importlib.import_module(module_name).cli_add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    try:
        return int(module.cli_run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
