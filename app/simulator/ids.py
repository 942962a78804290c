"""Ids in the shapes the real service uses (`resp_` + 50 hex, `call_` + 24 alphanumerics, ...)."""

import base64
import secrets
import string

_ALPHANUMERIC = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """`resp_`, `msg_`, `rs_`, `fc_`, `fco_`, `conv_` ... followed by 50 hex digits."""
    return f"{prefix}_{secrets.token_hex(25)}"


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(24))


def new_request_id() -> str:
    return f"req_{secrets.token_hex(16)}"


def new_encrypted_content() -> str:
    """An opaque reasoning blob shaped like the real ones (a Fernet token: `gAAAAA` then URL-safe base64)."""
    return "gAAAAA" + base64.urlsafe_b64encode(secrets.token_bytes(96)).decode()
