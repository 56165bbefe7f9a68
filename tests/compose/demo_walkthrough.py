"""The compose demo's printed instructions, followed with a real Matrix client (the
client-server API over HTTP with requests), as tests/compose/run drives it:

    demo_walkthrough.py chat      log in as demo, accept Bob's invite, write, get his answer;
                                  check the bridge's /health and a counted message in /metrics
    demo_walkthrough.py offline   (the bridge is stopped) write to Bob while it is down
    demo_walkthrough.py after     (the bridge was restarted) the message written while it was
                                  down is answered once, nothing before it twice, /health is ok

Ports come from SYNAPSE_URL and BRIDGE_URL; state between steps is a JSON file (STATE).
Every check prints one line; the last line is "N passed, N failed".
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from pathlib import Path

import requests

SYNAPSE = os.environ.get("SYNAPSE_URL", "http://127.0.0.1:8008")
BRIDGE = os.environ.get("BRIDGE_URL", "http://127.0.0.1:29317")
STATE = Path(os.environ.get("STATE", "/tmp/compose-walkthrough.json"))
BOB = "@msn_bob:localhost"
TIMEOUT = float(os.environ.get("WALKTHROUGH_TIMEOUT", "180"))

passed = failed = 0


def check(ok: bool, what: str, detail: str = "") -> bool:
    global passed, failed
    if ok:
        passed += 1
        print(f"ok    {what}", flush=True)
    else:
        failed += 1
        print(f"FAIL  {what}{': ' + detail if detail else ''}", flush=True)
    return ok


class Client:
    def __init__(self, token: str | None = None):
        self.s = requests.Session()
        self.token = token
        if token:
            self.s.headers["Authorization"] = f"Bearer {token}"

    def login(self, user: str, password: str) -> str:
        r = self.s.post(f"{SYNAPSE}/_matrix/client/v3/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password}, timeout=30)
        r.raise_for_status()
        self.token = r.json()["access_token"]
        self.s.headers["Authorization"] = f"Bearer {self.token}"
        return self.token

    def sync(self, since: str | None, timeout_ms: int = 5000) -> dict:
        params = {"timeout": str(timeout_ms)}
        if since:
            params["since"] = since
        r = self.s.get(f"{SYNAPSE}/_matrix/client/v3/sync", params=params, timeout=timeout_ms / 1000 + 30)
        r.raise_for_status()
        return r.json()

    def join(self, room: str) -> None:
        r = self.s.post(f"{SYNAPSE}/_matrix/client/v3/join/{requests.utils.quote(room)}", json={}, timeout=30)
        r.raise_for_status()

    def send(self, room: str, body: str) -> str:
        txn = uuid.uuid4().hex
        r = self.s.put(f"{SYNAPSE}/_matrix/client/v3/rooms/{requests.utils.quote(room)}/send/m.room.message/{txn}",
                       json={"msgtype": "m.text", "body": body}, timeout=30)
        r.raise_for_status()
        return r.json()["event_id"]

    def messages(self, room: str) -> list[dict]:
        """Every m.room.message of the room, oldest first."""
        out, token = [], None
        for _ in range(20):
            params = {"dir": "b", "limit": "100"}
            if token:
                params["from"] = token
            r = self.s.get(f"{SYNAPSE}/_matrix/client/v3/rooms/{requests.utils.quote(room)}/messages",
                           params=params, timeout=30)
            r.raise_for_status()
            j = r.json()
            out += [e for e in j.get("chunk", []) if e.get("type") == "m.room.message"]
            token = j.get("end")
            if not token or not j.get("chunk"):
                break
        return list(reversed(out))


def wait_for(what: str, fn, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(1)
    return None


def from_bob(c: Client, room: str, pattern: str) -> list[dict]:
    return [e for e in c.messages(room)
            if e["sender"] == BOB and re.search(pattern, e.get("content", {}).get("body", ""))]


def metrics() -> dict[str, float]:
    # The compose bridge serves /metrics to its token only (secrets-init generates it).
    token = os.environ.get("METRICS_TOKEN", "")
    text = requests.get(f"{BRIDGE}/metrics", headers={"authorization": f"Bearer {token}"}, timeout=10).text
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^(messenger_bridge_messages_total\{direction="\w+"\}) (\S+)$', text, re.M)}


def chat() -> None:
    c = Client()
    c.login("demo", "demopass")
    check(True, "logged in to the compose Synapse as demo / demopass")
    # Bob's invite (the portal room the bridge opens when Bob greets alice).
    since, room = None, None
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not room:
        j = c.sync(since)
        since = j["next_batch"]
        for rid, r in {**j.get("rooms", {}).get("invite", {}), **j.get("rooms", {}).get("join", {})}.items():
            events = r.get("invite_state", {}).get("events", []) + r.get("state", {}).get("events", []) \
                + r.get("timeline", {}).get("events", [])
            if any(e.get("type") == "m.room.member" and e.get("state_key") == "@demo:localhost"
                   and e.get("sender") == BOB for e in events):
                room = rid
    if not check(room is not None, "Bob (@msn_bob:localhost) invited demo to a chat"):
        return
    c.join(room)
    check(True, f"accepted the invite ({room})")
    greeting = wait_for("greeting", lambda: from_bob(c, room, r"^Hi! I'm Bob"))
    check(bool(greeting), "Bob's greeting arrived in the room")
    before = metrics()
    text = f"hello Bob, from the compose test {uuid.uuid4().hex[:8]}"
    c.send(room, text)
    answer = wait_for("answer", lambda: from_bob(c, room, re.escape(f"you said: {text}")))
    check(bool(answer), "Bob answered the message", f"no answer to {text!r}")
    health = requests.get(f"{BRIDGE}/health", timeout=10)
    check(health.status_code == 200, "the bridge's /health answers 200", f"{health.status_code} {health.text[:200]}")
    after = wait_for("metrics", lambda: (m := metrics()) and
                     m.get('messenger_bridge_messages_total{direction="matrix_to_xmpp"}', 0) >
                     before.get('messenger_bridge_messages_total{direction="matrix_to_xmpp"}', 0) and m, 30)
    check(bool(after), "/metrics counts the message sent to XMPP (messenger_bridge_messages_total)",
          f"before {before}, now {metrics()}")
    if after:
        check(after.get('messenger_bridge_messages_total{direction="xmpp_to_matrix"}', 0) >= 2,
              "/metrics counts Bob's messages to Matrix", str(after))
    STATE.write_text(json.dumps({"token": c.token, "room": room, "first": text}))


def offline() -> None:
    st = json.loads(STATE.read_text())
    c = Client(st["token"])
    try:
        down = requests.get(f"{BRIDGE}/health", timeout=3).status_code != 200
    except requests.RequestException:
        down = True
    check(down, "the bridge is stopped (its /health does not answer)")
    text = f"written while the bridge was down {uuid.uuid4().hex[:8]}"
    c.send(st["room"], text)
    check(True, "wrote to Bob while the bridge was stopped")
    st["offline"] = text
    STATE.write_text(json.dumps(st))


def after() -> None:
    st = json.loads(STATE.read_text())
    c = Client(st["token"])
    ok = wait_for("health", lambda: requests.get(f"{BRIDGE}/health", timeout=5).status_code == 200, 120)
    check(bool(ok), "the restarted bridge is healthy")
    answer = wait_for("answer", lambda: from_bob(c, st["room"], re.escape(f"you said: {st['offline']}")))
    check(bool(answer), "the message written while the bridge was down reached Bob, and he answered "
          "(the stored tokens still decrypt: the bridge logged in to XMPP again)")
    time.sleep(10)  # let any duplicate arrive
    msgs = c.messages(st["room"])
    bodies = [e["content"].get("body", "") for e in msgs]
    for text in (st["first"], st["offline"]):
        check(bodies.count(text) == 1, f"{text!r} is in the room once", str(bodies.count(text)))
        n = sum(1 for b in bodies if b == f"Bob here — you said: {text}")
        check(n == 1, f"Bob's answer to {text!r} is in the room once (no duplicate, none lost)", str(n))
    greetings = sum(1 for e in msgs if e["sender"] == BOB and e["content"].get("body", "").startswith("Hi! I'm Bob"))
    check(greetings == 1, "Bob's greeting is in the room once", str(greetings))


def main() -> int:
    step = sys.argv[1] if len(sys.argv) > 1 else "chat"
    try:
        {"chat": chat, "offline": offline, "after": after}[step]()
    except Exception as e:  # one clear line, then the summary
        check(False, f"{step}: {type(e).__name__}", str(e))
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
