"""Signaling over WebSocket: the sans-I/O protocol and hub, and the gevent shell around them."""
