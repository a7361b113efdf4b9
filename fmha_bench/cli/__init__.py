"""`fmha-bench` command line. Each command lives in its own module; this file only wires them."""
from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import EXIT_USAGE, UserError


class _Group(click.Group):
    """Turns a UserError anywhere below into one red line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(EXIT_USAGE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fmha-bench")
def cli():
    """Benchmark and check fused multi-head attention kernels.

    Exit codes: 0 all ok, 1 a point failed or mismatched, 2 bad usage or input.
    """


def _register():
    from . import build_cmd, doctor_cmd, list_cmd, parity_cmd, report_cmd, sweep_cmd
    for module in (sweep_cmd, parity_cmd, list_cmd, report_cmd, build_cmd, doctor_cmd):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main():
    cli(prog_name="fmha-bench")
