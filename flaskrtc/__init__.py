"""flaskrtc: a WebRTC signaling server with a built-in TURN relay."""

__version__ = "0.1.0"
