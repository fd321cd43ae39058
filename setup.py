"""flaskrtc: WebRTC signaling server with a built-in TURN relay."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "flaskrtc" / "__init__.py").read_text()
).group(1)  # type: ignore[union-attr]

setup(
    name="flaskrtc",
    version=VERSION,
    description="WebRTC signaling server with a built-in TURN relay (flutter-webrtc compatible)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["flaskrtc", "flaskrtc.*"]),
    include_package_data=True,
    install_requires=[
        # Ranges known to work together; gevent-websocket is unmaintained and
        # pinned exactly because flaskrtc patches around its 0.10.1 behaviour.
        "gevent>=23.9,<27",
        "gevent-websocket==0.10.1",
        "Flask>=3.0,<4",
        "Werkzeug>=3.0,<4",
        "cryptography>=41,<51",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "websocket-client>=1.7,<2",
            "hypothesis>=6.100,<7",
            "ruff>=0.6,<1",
            "mypy>=1.10,<3",
            # A TURN client nobody here wrote, for interop tests.
            "aioice>=0.9,<1",
            # Validates .github/workflows/*.yml against the vendored GitHub schema, offline.
            "check-jsonschema>=0.28,<1",
            # The web demo's tests: Playwright drives Debian's chromium (no browser download),
            # and aiortc is a WebRTC peer that is not a browser, like the Flutter apps.
            "playwright>=1.48,<2",
            "aiortc>=1.9,<2",
        ],
        "build": ["pyinstaller>=6.3,<7"],
    },
    entry_points={"console_scripts": ["flaskrtc = flaskrtc.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Flask",
        "Topic :: Communications :: Conferencing",
    ],
)
