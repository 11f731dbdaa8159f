"""Loading a class of the user's own: ``MODULE:CLASS`` or ``FILE.py:CLASS``.

Policies (guest, ``--policy``) and balloon controllers (host, ``--controller``)
are both loaded here, so both give the same one-line errors: a spec without a
class, a file that is not there, a module that does not import (its own error,
shortened), a name that is not a subclass of the contract's base, an abstract one.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from pagehint.errors import UsageError


def is_plugin(name: str) -> bool:
    return ":" in name


def said(e: BaseException) -> str:
    """An exception in one short line (a module's message may be long or multi-line)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text if len(text) <= 200 else text[:200] + "…"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_class(spec: str, flag: str, base: type[Any], what: str) -> type[Any]:
    """The subclass of ``base`` that ``spec`` names; UsageError (one line) if it
    cannot be had. ``what`` names the base in errors (guest.hinting.base.Policy)."""
    where, _, cls_name = spec.rpartition(":")
    if not where or not cls_name.isidentifier():
        raise UsageError(f"{flag} {spec}: give MODULE:CLASS or FILE.py:CLASS")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise UsageError(f"{flag} {spec}: no file {where}")
            name = f"pagehint_plugin_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise UsageError(f"{flag} {spec}: cannot load {where}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except UsageError:
        raise
    except ModuleNotFoundError as e:
        if e.name is None or not where.startswith(e.name):
            raise UsageError(f"{flag} {spec}: importing it failed: no module {e.name}") from None
        raise UsageError(
            f"{flag} {spec}: no module {e.name} (give a FILE.py:CLASS, or put its folder "
            f"on PYTHONPATH)"
        ) from None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # the module's own code failed (or exited) while importing
        raise UsageError(f"{flag} {spec}: importing it failed: {said(e)}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise UsageError(f"{flag} {spec}: no class {cls_name} in {where}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UsageError(f"{flag} {spec}: {cls_name} is not a {what}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise UsageError(f"{flag} {spec}: {cls_name} is abstract (implement {missing})")
    return cls
