"""The ``trainfleet`` command line: one thin module per command group, registered here."""

from __future__ import annotations

import sys

import typer

from trainfleet import __version__
from trainfleet.errors import TrainfleetError

app = typer.Typer(
    name="trainfleet",
    help="Launch, keep alive and debug training jobs and the GPU fleet they run on.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"trainfleet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version."),
) -> None:
    """Launch, keep alive and debug training jobs and the GPU fleet they run on."""


def _register() -> None:
    # Each command module adds its commands to ``app`` on import.
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_register()


def main() -> None:
    """Console entry point: run the app, turning trainfleet errors into one line and an exit code."""
    try:
        rc = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
        sys.exit(rc if isinstance(rc, int) else 0)
    except TrainfleetError as exc:
        print(f"trainfleet: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("trainfleet: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors (typer may bundle its own click)
        if isinstance(exc, _click_exceptions()):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _click_exceptions() -> tuple[type[Exception], ...]:
    kinds: list[type[Exception]] = []
    try:
        from typer._click.exceptions import ClickException as bundled

        kinds.append(bundled)
    except ImportError:
        pass
    try:
        from click.exceptions import ClickException as plain

        kinds.append(plain)
    except ImportError:
        pass
    return tuple(kinds)
