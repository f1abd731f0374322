"""The launcher: run a script or module written for onnxruntime on engineroom, unmodified.

    python -m engineroom.compat script.py ARGS...
    python -m engineroom.compat -m package ARGS...
    python -m engineroom.compat -c "import onnxruntime; ..."
    python -m engineroom.compat --install-hook      # once per environment: enables ENGINEROOM_AS_ONNXRUNTIME=1
    python -m engineroom.compat --uninstall-hook

The launcher sets ``ENGINEROOM_AS_ONNXRUNTIME=1`` for the program, so Python child processes it starts get
engineroom too where the startup hook is installed.
"""
from __future__ import annotations

import os
import runpy
import sys
import sysconfig

from engineroom.compat import ENV_SWITCH, HOOK_FILE, HOOK_LINE, install_as_onnxruntime

USAGE = ("usage: python -m engineroom.compat (SCRIPT.py | -m MODULE | -c CODE) [ARGS...]\n"
         "       python -m engineroom.compat (--install-hook | --uninstall-hook)")


def _hook_path() -> str:
    return os.path.join(sysconfig.get_paths()["purelib"], HOOK_FILE)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    if argv[0] == "--install-hook":
        with open(_hook_path(), "w", encoding="utf-8") as f:
            f.write(HOOK_LINE)
        print(f"wrote {_hook_path()}: Python processes started with {ENV_SWITCH}=1 now import engineroom as "
              f"onnxruntime")
        return 0
    if argv[0] == "--uninstall-hook":
        if os.path.exists(_hook_path()):
            os.remove(_hook_path())
        return 0
    os.environ[ENV_SWITCH] = "1"
    install_as_onnxruntime()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 - the user's own code
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
