"""Built-in TURN/STUN relay (RFC 8489 / RFC 8656) and its REST credentials.

This package never imports Flask: the signaling side uses only
:mod:`flaskrtc.turn.credentials`.
"""
