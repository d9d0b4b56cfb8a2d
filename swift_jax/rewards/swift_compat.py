"""ms-swift's import paths for `--external_plugins` files, so plugin files written for ms-swift load unchanged.

ms-swift 4 plugin files start with `from swift.rewards import ORM, orms` (3.x: `from swift.plugin import ORM,
orms`). When a plugin file is loaded and ms-swift is not installed, `install()` registers import aliases in
`sys.modules`: `swift.rewards`, `swift.rewards.orm`, `swift.plugin`, `swift.plugin.orm` hold swift_jax's `ORM`
and `orms`, and `swift.utils` its `get_logger`. Nothing named `swift` exists on disk, so an installed ms-swift
is never shadowed (with ms-swift installed, its own modules load). Any other `swift.*` name (AsyncORM, PRM,
prms, rm_plugins, swift.rollout.multi_turn, swift.infer_engine, ...) raises an ImportError saying what
swift_jax offers instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import types

from .orm import ORM, orms

# alias module -> the names it holds
ALIASES: dict[str, dict[str, object]] = {
    "swift": {},
    "swift.rewards": {"ORM": ORM, "orms": orms},
    "swift.rewards.orm": {"ORM": ORM, "orms": orms},
    "swift.plugin": {"ORM": ORM, "orms": orms},
    "swift.plugin.orm": {"ORM": ORM, "orms": orms},
    "swift.utils": {"get_logger": lambda name="swift": logging.getLogger(name)},
}
OFFERED = "swift.rewards / swift.plugin (ORM, orms) and swift.utils (get_logger)"
HINT = ("swift_jax runs reward plugins of the form `class MyReward(ORM)` + `orms['name'] = MyReward` "
        "(synchronous outcome rewards); write `from swift_jax.rewards import ORM, orms`, or install ms-swift")


class _AliasModule(types.ModuleType):
    """A module of `ALIASES`; a name it lacks raises ImportError naming what is offered."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(f"{self.__name__}.{attr}: not available without ms-swift; swift_jax provides {OFFERED}. {HINT}")


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Refuses `swift.*` submodules that have no alias, with the hint (instead of a bare ModuleNotFoundError)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("swift.") and fullname not in ALIASES:
            raise ImportError(f"{fullname}: not available without ms-swift; swift_jax provides {OFFERED}. {HINT}", name=fullname)
        return None


def install() -> bool:
    """Register the `swift` aliases unless ms-swift is installed (then its real modules serve the plugin);
    returns whether the aliases are in place."""
    if "swift" in sys.modules:
        return isinstance(sys.modules["swift"], _AliasModule)
    if importlib.util.find_spec("swift") is not None:
        return False
    for name, values in ALIASES.items():
        module = _AliasModule(name, "swift_jax's alias of ms-swift's plugin imports (swift_jax.rewards.swift_compat)")
        module.__path__ = []  # a package, so `swift.rewards` resolves as a submodule
        module.__dict__.update(values)
        sys.modules[name] = module
    for name in ALIASES:
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])
    sys.meta_path.append(_AliasFinder())
    return True
