"""Put on a rank's ``PYTHONPATH`` by the agent: ``SIGUSR1`` makes the rank write its Python stacks.

``faulthandler.register(SIGUSR1)`` writes every thread's stack to ``$TRAINFLEET_STACK_FILE`` (appended),
so the agent can dump a hung rank even when py-spy is not installed. Any other ``sitecustomize`` further
down ``sys.path`` still runs afterwards. Stdlib only, and nothing at all outside trainfleet.
"""

import os
import sys


def _register() -> None:
    path = os.environ.get("TRAINFLEET_STACK_FILE")
    if not path:
        return
    import faulthandler
    import signal

    try:
        stream = open(path, "a")  # noqa: SIM115 - kept open for the life of the process: faulthandler needs the fd
        faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True, chain=False)
        sys.modules[__name__].__dict__["_trainfleet_stack_stream"] = stream
    except (OSError, ValueError, AttributeError):
        pass


def _chain() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_register()
try:
    _chain()
except Exception as exc:  # a broken site hook elsewhere must not look like ours
    print(f"trainfleet: the next sitecustomize failed: {exc}", file=sys.stderr)
