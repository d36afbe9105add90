"""Wire format of the cluster bus: JSON, optionally HMAC-signed.

Unsigned (no secret configured) a message is the JSON object that
python-socketio's ``PubSubManager`` publishes, plus ``"ts"`` (sender wall
clock, ms) used for the lag gauge, and first ``"src"`` (the sender's host
id: its cleartext header, see below)::

    {"src": "3f2a...", "method": "emit", "event": "chat", "data": ["hi"],
     "namespace": "/", "room": "lobby", "skip_sid": null, "callback": null,
     "binary": false, "host_id": "3f2a...", "ts": 1732520000123}

so stock write-only emitters (``socketio.RedisManager(url, write_only=True)``)
interoperate; a node or worker runs unsigned only with an explicit opt-out
(:func:`.signing_policy.check_signing`). With a secret every message travels in an
envelope::

    {"v": 2, "src": "<sender host_id>", "seq": 42, "ts": 1732520000123,
     "log": 1, "sig": "<hex HMAC-SHA256>", "body": "<the message, as JSON>"}

``sig`` covers ``v``, ``src``, ``seq``, ``ts``, ``log`` and ``body``. A
receiver drops (and counts) anything unsigned, wrongly signed, older than
``max_age`` seconds, or whose ``seq`` is not above the last one seen from
``src`` in its lane (a replay).

Lanes: on a Redis Cluster with ``redis_partitions`` above 1, room and node
channels are spread over lanes on several shards (see
:mod:`.backends.redis_lanes`), read over one connection each, so one
sender's messages in two lanes may arrive in either order. A message in
lane ``k`` (1 and up) carries ``"ln": k`` after ``seq``, its signature
covers the lane (``v2l`` instead of ``v2`` in the signed text), and the
receiver keeps the last ``seq`` per sender *and lane*: numbers still come
from one counter, so they grow along each lane. A message without ``ln``
is in lane 0 (the common channel, and everything when there are no lanes):
the wire is unchanged there.

The envelope's first fields are its cleartext header, always written in
this order so that they can be read with a byte comparison, before any
JSON parse or HMAC::

    {"v":2,"src":"<sender host_id>","lid":7,"seq":...

(unsigned: ``{"src":"<sender host_id>","lid":7,`` and the rest of the
message; ``src`` is not python-socketio's ``host_id``, which names the
receiver in a ``callback`` message).

``lid`` (only on a message that has one: a node's own logged emit, see
:mod:`.ordered_delivery`) copies the ``"lid"`` that :meth:`Codec.dumps`
writes first in the body (so the sender reads it off the body, and the
signature covers it there; a verified envelope whose header ``lid``
differs from its body's is dropped as malformed). Older receivers ignore
the extra field, so the wire stays version 2. A node reads the header of
every message with :class:`OwnHeader`: its own messages coming back are
handled by it without being decoded (see :mod:`.receiver`), and only ever
acted on when their bytes are the very bytes this node sealed. Messages
without a header (stock emitters') are decoded as before.

Replays after a restart: a receiver has no memory of the sequence numbers
it saw before it started, so it also drops every message sealed before it
started (less ``max_clock_skew``, 2 s by default, the tolerated difference
between node clocks): a message captured before a restart cannot be
replayed to the restarted node. Sources are host ids, random per process,
so a restarted *sender* starts a fresh sequence under a new ``src``.

Offsets: the recovery script (:mod:`.recovery_log`) prefixes a logged
message with the stream id Redis assigned it (``@<ms>-<n>@``), which the
sender cannot know when it signs. So the signature covers whether the
message carries an offset at all (``log``), and the receiver accepts an
offset only on a message signed as logged, only when its time part lies
between the message's signed ``ts`` less ``max_clock_skew`` and ``ts``
plus ``max_age`` (Redis stamps it while the signed message is in
flight). Anything else is dropped and counted (``dropped_bad_offset``): an
offset added to an unlogged message, stripped from a logged one, or far
from its publish time such as ``99999999999999-0``. Together with the
replay rules above, a forged offset needs a fresh signed message that the
receiver has not seen yet (Redis delivers the genuine copy first to every
subscribed node), and even then cannot point outside that message's
publish time; recovery then also requires the offset to exist in the
stream.

Nothing is ever unpickled or evaluated: the only decoder is ``json.loads``
and the result must pass a per-method field check.

A serialized message may be at most ``max_message_bytes`` long (8 MiB by
default), checked where it is serialized, so the emitting caller gets
:class:`~.errors.BusMessageTooLarge` before anything is delivered or sent.
The reason is Redis: a subscriber whose output buffer passes
``client-output-buffer-limit pubsub`` (32 MB hard by default) is
disconnected, so one huge PUBLISH would cut every node off the bus at once.
The limit applies to the message body; signing wraps it in an envelope
whose JSON escaping can grow it (a body of quotes doubles, non-ASCII text
escaped as ``\\uXXXX`` up to triples), still under 32 MB at the default.
"""
from __future__ import annotations

import hashlib
import hmac
import json as std_json
import threading
import time
from typing import Any

from cluster.bus.errors import (
    BusConfigurationError,
    BusMessageTooLarge,
    BusSerializationError,
    Dropped,
)
from cluster.bus.message_schema import check_fields
from cluster.recovery.offsets import Offset

#: default ``max_message_bytes``: well under Redis's 32 MB pub/sub output
#: buffer limit, even with a signed envelope around it
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: (sender, lane) pairs whose last sequence number is kept before the
#: silent ones (quiet for longer than ``max_age``) are forgotten
SEQ_MEMORY = 4096

_MIB = 1024 * 1024


def encoded_size(body: str) -> int:
    """Bytes ``body`` takes on the wire (UTF-8).

    ``str.isascii`` is a flag check in CPython, so the usual case (the
    standard ``json`` escapes everything to ASCII) costs no copy.
    """
    return len(body) if body.isascii() else len(body.encode("utf-8"))


def _now_ms() -> int:
    return int(time.time() * 1000)


#: how :meth:`Codec.dumps` starts the body of a message that has a ``lid``
_LID_HEAD = '{"lid":'
#: a header's ``lid`` field, right after ``src``
_LID_FIELD = b'"lid":'
#: :meth:`OwnHeader.read` of an own message whose header names no ``lid``
NO_LID = -1
#: the ``lid`` of an emit its node delivered to nobody, having no member of
#: the room when it was made (the ids of logged emits start at 1, see
#: :class:`~.ordered_delivery.OrderedDelivery`): back on a channel the node
#: follows by then, it is decoded and delivered like a peer's (see
#: :mod:`.receiver`)
UNSERVED_LID = 0


def _digits(text: str | bytes) -> int | None:
    """``text`` as a non-negative int of at most 18 ASCII digits, else None."""
    if 0 < len(text) <= 18 and text.isascii() and text.isdigit():
        return int(text)
    return None


def body_lid(body: str) -> int | None:
    """The ``lid`` a serialized message starts with (see :meth:`Codec.dumps`),
    or None when it has none."""
    if not body.startswith(_LID_HEAD):
        return None
    start = len(_LID_HEAD)
    return _digits(body[start:body.find(",", start)])


class OwnHeader:
    """Tells, from a payload's first bytes (the envelope's header, or an
    unsigned message's when ``signed`` is False), whether ``src`` sealed it
    and which ``lid`` its header names, without decoding anything.

    The answer is only a claim (anyone with access to Redis can write those
    bytes): callers act on it only to drop a message, or when the payload is
    byte for byte one they sealed themselves.
    """

    def __init__(self, src: str, signed: bool = True) -> None:
        # the exact bytes Codec.seal writes (standard json, compact)
        start = '{"v":2,"src":' if signed else '{"src":'
        self._prefix = (start + std_json.dumps(src) + ",").encode("ascii")
        self._lid_at = len(self._prefix) + len(_LID_FIELD)

    def read(self, payload: Any) -> int | None:
        """None: not sealed by ``src`` (as far as the header says); else the
        ``lid`` of its header, :data:`NO_LID` when it names none."""
        if not isinstance(payload, (bytes, bytearray)) or not payload.startswith(self._prefix):
            return None
        if not payload.startswith(_LID_FIELD, len(self._prefix)):
            return NO_LID
        end = payload.find(b",", self._lid_at, self._lid_at + 20)
        lid = _digits(bytes(payload[self._lid_at:end])) if end > 0 else None
        return lid if lid is not None else NO_LID


class Codec:
    """Encodes outgoing and checks incoming bus messages.

    :param secret: shared HMAC key; ``None`` disables signing and accepts
                   unsigned messages (needed for stock python-socketio
                   emitters). At least 16 bytes when given.
    :param json_module: ``dumps``/``loads`` provider (the server's).
    :param max_age: seconds a signed message stays acceptable. Default 60.
    :param max_message_bytes: largest serialized message :meth:`dumps`
                              accepts. Default 8 MiB (see the module doc).
    :param max_clock_skew: seconds node clocks may differ (default 2): a
                           receiver accepts messages sealed up to this long
                           before it started, and offsets stamped up to
                           this long before their message was sealed.
    """

    def __init__(self, secret: str | bytes | None = None,
                 json_module: Any = std_json, max_age: float = 60.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_clock_skew: float = 2.0) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if secret is not None and len(secret) < 16:
            raise BusConfigurationError(
                "The bus signing secret is too short: use at least 16 random "
                "bytes, e.g. the output of `python -c 'import secrets; "
                "print(secrets.token_hex(32))'`.")
        self.secret = secret or None
        self.json = json_module
        self.max_age_ms = int(max_age * 1000)
        self.max_message_bytes = max_message_bytes
        self.skew_ms = int(max_clock_skew * 1000)
        # nothing sealed before this receiver existed can be new to it: its
        # sequence memory starts empty, so older messages may be replays
        self.not_before_ms = _now_ms() - self.skew_ms
        self._seq = 0
        self._seq_lock = threading.Lock()
        # (src, lane) -> (seq, ts)
        self._last_seq: dict[tuple[str, int], tuple[int, int]] = {}
        # size at which silent sources are looked for next: doubled past
        # what stays, so a cluster with more live (source, lane) pairs than
        # SEQ_MEMORY does not scan them all on every message
        self._forget_above = SEQ_MEMORY
        self._src_heads: dict[str, str] = {}

    @property
    def signed(self) -> bool:
        return self.secret is not None

    def dumps(self, message: dict[str, Any]) -> str:
        """Serialize at the caller, so a bad or oversized payload raises
        right there (:class:`BusSerializationError`,
        :class:`BusMessageTooLarge`).

        A message with an int ``"lid"`` is written with it first
        (``{"lid":7,...``), whatever the JSON module's key order: the sender
        copies it into the envelope's header from there (:func:`body_lid`).
        """
        lid = message.get("lid")
        head = ""
        if type(lid) is int and lid >= 0:
            head = f'{_LID_HEAD}{lid},'
        if not self.signed:
            message = dict(message, ts=_now_ms())
        elif head:
            message = dict(message)
        if head:
            del message["lid"]  # a copy: the caller's message keeps it
        try:
            if self.json is std_json:
                body = std_json.dumps(message, separators=(",", ":"))
            else:
                body = self.json.dumps(message)
        except (TypeError, ValueError, OverflowError) as exc:
            what = message.get("event") or message.get("method")
            raise BusSerializationError(
                f"Cannot send {what!r} through the cluster bus: its payload "
                f"is not JSON serializable ({exc}). Send only dict, list, "
                f"str, int, float, bool, None or bytes values.") from exc
        if head:
            text = body.lstrip()
            if not message or not text.startswith("{"):
                raise BusSerializationError(
                    f"The JSON module {self.json!r} did not serialize a bus message "
                    f"as a JSON object.")
            body = head + text[1:]
        # bytes are at least as many as characters: most bodies are decided
        # without measuring
        if len(body) > self.max_message_bytes // 4:
            size = encoded_size(body)
            if size > self.max_message_bytes:
                self._too_large(message, size)
        return body

    def _too_large(self, message: dict[str, Any], size: int) -> None:
        what = message.get("event") or message.get("method")
        limit = self.max_message_bytes
        raise BusMessageTooLarge(
            f"Cannot send {what!r} through the cluster bus: the message is "
            f"{size / _MIB:.1f} MiB, over max_message_bytes "
            f"({limit / _MIB:.1f} MiB); nothing was sent. Redis disconnects "
            f"every node's subscriber when one falls 32 MB behind "
            f"(client-output-buffer-limit pubsub), so send large data out of "
            f"band (store it and emit its key or URL) or in smaller emits, or "
            f"raise max_message_bytes in message_queue_options if your "
            f"broker's limits allow it.", size, limit)

    def seal(self, body: str, src: str, logged: bool = False, lane: int = 0) -> bytes:
        """Wrap a serialized message for the wire (signs it if configured).

        Called by the single publisher right before sending, so ``seq``
        grows in send order and ``ts`` is the publish time. ``logged``: the
        message goes through the recovery stream, which prefixes its offset;
        the signature says so, so no offset can be added or stripped. The
        header (``v``, ``src``, then ``lid`` when the body starts with one)
        comes first, see the module doc. ``lane``: the lane of the channel
        it goes on (see the module doc; 0: the common one).
        """
        if not self.signed:
            text = body.lstrip()
            if text.startswith("{") and not text.startswith("{}"):
                # the header: src first (see the module doc)
                body = self._src_head(src) + text[1:]
            return body.encode("utf-8")
        with self._seq_lock:
            self._seq += 1
            seq = self._seq
        ts = _now_ms()
        log = 1 if logged else 0
        sig = self._sign(src, seq, ts, log, body, lane)
        lid = body_lid(body)
        envelope: dict[str, Any] = ({"v": 2, "src": src, "seq": seq} if lid is None else
                                    {"v": 2, "src": src, "lid": lid, "seq": seq})
        if lane:
            envelope["ln"] = lane
        envelope.update(ts=ts, log=log, sig=sig, body=body)
        return std_json.dumps(envelope, separators=(",", ":")).encode("utf-8")

    def _src_head(self, src: str) -> str:
        """``{"src":"<src>",``, the unsigned header (one per process, cached)."""
        head = self._src_heads.get(src)
        if head is None:
            if len(self._src_heads) > 64:
                self._src_heads.clear()
            head = self._src_heads[src] = '{"src":' + std_json.dumps(src) + ","
        return head

    def _sign(self, src: str, seq: int, ts: int, log: int, body: str, lane: int = 0) -> str:
        # a lane's text starts otherwise ("v2l"), so no lane-0 text reads as one
        msg = (f"v2l\n{lane}\n{src}\n{seq}\n{ts}\n{log}\n{body}" if lane else
               f"v2\n{src}\n{seq}\n{ts}\n{log}\n{body}").encode()
        return hmac.new(self.secret or b"", msg, hashlib.sha256).hexdigest()

    def open(self, raw: Any, archived: bool = False,
             offset: str | None = None) -> tuple[dict[str, Any], int | None]:
        """Return ``(message, sent_at_ms)`` or raise :class:`Dropped`.

        ``offset`` is the recovery offset the message was published with
        (``None``: none); a signed message must be signed as logged to carry
        one, and the offset must fit its publish time (see the module doc).
        """
        try:
            if isinstance(raw, (bytes, bytearray, memoryview)):
                raw = bytes(raw).decode("utf-8")
            outer = std_json.loads(raw) if isinstance(raw, str) else raw
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise Dropped("dropped_malformed", f"not JSON: {exc}") from None
        if not isinstance(outer, dict):
            raise Dropped("dropped_malformed", "not a JSON object")
        ts: int | None
        if self.signed:
            message, ts = self._verify(outer, archived, offset)
        else:
            if "sig" in outer and "body" in outer:
                # a signed peer while we have no secret: cannot verify it
                raise Dropped("dropped_bad_signature",
                              "signed message but no secret configured")
            # the header is for the receiver's first look only
            outer.pop("src", None)
            message, sent = outer, outer.get("ts")
            ts = sent if isinstance(sent, int) and not isinstance(
                sent, bool) else None
        check_fields(message)
        return message, ts

    def open_archived(self, raw: Any) -> tuple[dict[str, Any], int | None]:
        """Open a message read back from the recovery stream.

        The signature is checked as for live messages, but not the age or
        the sequence number: replaying the past is the point here.
        """
        return self.open(raw, archived=True)

    def _verify(self, outer: dict[str, Any], archived: bool = False,
                offset: str | None = None) -> tuple[dict[str, Any], int]:
        if "sig" not in outer:
            raise Dropped("dropped_unsigned", "message is not signed")
        src, seq, ts, log, sig, body = (outer.get(k) for k in
                                        ("src", "seq", "ts", "log", "sig", "body"))
        lane = outer.get("ln", 0)
        if not (outer.get("v") == 2 and isinstance(src, str)
                and isinstance(seq, int) and isinstance(ts, int)
                and log in (0, 1) and isinstance(sig, str)
                and isinstance(body, str) and type(lane) is int and lane >= 0):
            raise Dropped("dropped_malformed", "bad signed envelope")
        if not hmac.compare_digest(self._sign(src, seq, ts, log, body, lane), sig):
            raise Dropped("dropped_bad_signature", "signature mismatch")
        if archived:
            return self._body(body, outer), ts
        now = _now_ms()
        if abs(now - ts) > self.max_age_ms:
            raise Dropped("dropped_replayed", f"message {now - ts} ms old")
        if ts < self.not_before_ms:
            raise Dropped("dropped_replayed",
                          f"sealed {self.not_before_ms + self.skew_ms - ts} ms "
                          f"before this node started")
        self.check_offset(offset, bool(log), ts)
        last = self._last_seq.get((src, lane))
        if last is not None and seq <= last[0]:
            raise Dropped("dropped_replayed", f"seq {seq} already seen")
        self._last_seq[src, lane] = (seq, now)
        if len(self._last_seq) > self._forget_above:
            self._forget_old_sources(now)
            self._forget_above = max(SEQ_MEMORY, 2 * len(self._last_seq))
        return self._body(body, outer), ts

    def check_offset(self, offset: str | None, log: bool, ts: int) -> None:
        """Raise :class:`Dropped` (``dropped_bad_offset``) unless ``offset``
        fits a message sealed at ``ts`` as logged (``log``) or not (see the
        module doc)."""
        if offset is None:
            if log:
                raise Dropped("dropped_bad_offset", "logged message without its offset")
            return
        if not log:
            raise Dropped("dropped_bad_offset", "offset on a message not signed as logged")
        parsed = Offset.parse(offset)
        if parsed is None:
            raise Dropped("dropped_bad_offset", "malformed offset")
        stamped = parsed.ms
        if not ts - self.skew_ms <= stamped <= ts + self.max_age_ms:
            raise Dropped("dropped_bad_offset",
                          f"offset {offset} is {stamped - ts} ms from its message")

    @staticmethod
    def _body(body: str, outer: dict[str, Any]) -> dict[str, Any]:
        try:
            message = std_json.loads(body)
        except (ValueError, RecursionError):
            raise Dropped("dropped_malformed", "signed body is not JSON") from None
        if not isinstance(message, dict):
            raise Dropped("dropped_malformed", "signed body not an object")
        if "lid" in outer and (type(outer["lid"]) is not int
                               or outer["lid"] != message.get("lid")):
            # the header is read before any check (OwnHeader): it must say
            # what the signed body says
            raise Dropped("dropped_malformed", "header lid is not the body's")
        return message

    def _forget_old_sources(self, now: int) -> None:
        # a source silent for longer than max_age cannot be replayed anyway
        for source, (_, seen) in list(self._last_seq.items()):
            if now - seen > self.max_age_ms:
                del self._last_seq[source]
