"""The import rules of the layout: ``flaskrtc/turn`` imports neither Flask, the signaling
package nor the metrics (its counters are read from outside); ``flaskrtc/signal`` imports
no metrics and, of TURN, only the credential helper; only the app and the process assembly
import ``flaskrtc.metrics`` and prometheus_client."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "flaskrtc"


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def under(package: str) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): imports(p) for p in (ROOT / package).glob("*.py")}


def test_turn_imports_no_flask_signaling_or_metrics() -> None:
    for name, modules in under("turn").items():
        bad = {
            m
            for m in modules
            if m.split(".")[0] in ("flask", "werkzeug", "prometheus_client")
            or m.startswith(("flaskrtc.signal", "flaskrtc.metrics", "flaskrtc.app"))
        }
        assert not bad, (name, bad)


def test_signal_imports_only_the_credential_helper_of_turn_and_no_metrics() -> None:
    for name, modules in under("signal").items():
        turn = {m for m in modules if m.startswith("flaskrtc.turn")}
        assert turn <= {"flaskrtc.turn.credentials"}, (name, turn)
        metrics = {m for m in modules if m.startswith(("flaskrtc.metrics", "prometheus_client"))}
        assert not metrics, (name, metrics)


def test_only_the_app_and_the_process_assembly_import_the_metrics() -> None:
    users = {
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if p.name != "metrics.py" and "flaskrtc.metrics" in imports(p)
    }
    assert users == {"app.py", "server.py"}
    exporters = {
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if any(m.split(".")[0] == "prometheus_client" for m in imports(p))
    }
    assert exporters == {"metrics.py"}
