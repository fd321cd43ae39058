"""Entry script of the one-file binary (build/flaskrtc.spec).

Absolute import on purpose: PyInstaller runs this file as ``__main__`` with no parent package,
so ``from .cli import main`` would fail, and running a file inside flaskrtc/ as the script would
put flaskrtc/ on sys.path, where flaskrtc/signal shadows the standard ``signal`` module.
"""

from flaskrtc.cli import main

raise SystemExit(main())
