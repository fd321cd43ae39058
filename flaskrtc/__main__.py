"""``python -m flaskrtc``: run the server."""

from flaskrtc.cli import main

raise SystemExit(main())
