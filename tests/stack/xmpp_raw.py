"""A minimal raw XMPP client for checking the server's exact wire behaviour.

slixmpp (the real client used by the smoke test) hides details the tests must see: the exact
mechanism list, a raw <auth/> text, the error conditions, a stream error. This helper speaks
just enough RFC 6120 to get there: stream header, STARTTLS (§5), SASL (§6) and reading
elements by regular expression. Not a general XML parser; test use only.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


class RawXMPP:
    def __init__(self, env: dict[str, str], domain: str, port: int | None = None, timeout: float = 5.0):
        self.env = env
        self.domain = domain
        self.timeout = timeout
        self.sock: socket.socket = socket.create_connection(
            (env["XMPP_HOST"], port or int(env["XMPP_PORT"])), timeout=timeout
        )
        self.buf = ""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawXMPP":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: str) -> None:
        self.sock.sendall(data.encode())

    def read_until(self, pattern: str) -> re.Match:
        """Read until `pattern` matches the buffer; consume up to the end of the match."""
        rx = re.compile(pattern, re.S)
        while True:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"stream closed while waiting for {pattern!r}; got {self.buf[-500:]!r}")
            self.buf += chunk.decode()

    def open_stream(self) -> str:
        """Send a stream header; return the text of <stream:features/>."""
        self.send(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='http://etherx.jabber.org/streams' to='{self.domain}' version='1.0'>"
        )
        return self.read_until(r"<stream:features.*?</stream:features>").group(0)

    def starttls(self) -> str:
        """Negotiate TLS (RFC 6120 §5) and restart the stream; return the new features."""
        features = self.open_stream()
        assert "urn:ietf:params:xml:ns:xmpp-tls" in features, features
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.read_until(r"<proceed[^>]*/>")
        ctx = ssl.create_default_context(cafile=self.env["XMPP_CA_FILE"])
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.domain)
        self.buf = ""
        return self.open_stream()

    @staticmethod
    def mechanisms(features: str) -> list[str]:
        return re.findall(r"<mechanism>([^<]+)</mechanism>", features)

    def auth(self, mechanism: str, text: str | None) -> tuple[str, str]:
        """Send <auth/> with `text` as is (callers base64 it when the mechanism wants that).
        Return (element name, element xml): success, failure or challenge."""
        body = "" if text is None else text
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{body}</auth>")
        return self.read_sasl_reply()

    def response(self, text: str) -> tuple[str, str]:
        self.send(f"<response xmlns='{NS_SASL}'>{text}</response>")
        return self.read_sasl_reply()

    def read_sasl_reply(self) -> tuple[str, str]:
        m = self.read_until(r"<(success|failure|challenge)\b[^>]*?(?:/>|>.*?</\1>)")
        return m.group(1), m.group(0)

    @staticmethod
    def b64(data: bytes | str) -> str:
        if isinstance(data, str):
            data = data.encode()
        return base64.b64encode(data).decode()

    def bind(self) -> str:
        """After <success/>: restart the stream, bind a resource, return the bound JID."""
        self.buf = ""
        features = self.open_stream()
        assert "urn:ietf:params:xml:ns:xmpp-bind" in features, features
        self.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        return self.read_until(r"<jid>([^<]+)</jid>").group(1)
