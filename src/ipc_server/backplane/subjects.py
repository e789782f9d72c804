"""Topics as NATS subjects, and back: the naming rules of the backplane, without I/O.

Every subject lives under the namespace, so two applications on one broker
never share one. Under it:

=========================== ===============================================
``<ns>.t.<topic tokens>``   what a server publishes; an interest subscribes
                            to the same shape, with ``*`` / ``>`` wildcards
``<ns>.s.<service tokens>`` the workers of a service (one NATS queue group)
``<ns>.v``                  cluster surveys
``<ns>.h``                  heartbeats (membership)
``<ns>.b``                  cluster broadcasts (to every connection)
``<ns>.r.<server>.<token>`` answers to one server's calls and surveys, and
                            (token ``k``) the cancellations sent to it
=========================== ===============================================

A topic is split on ``.`` into tokens. A *plain* token (one or more of
``[A-Za-z0-9_-]``) is its own subject token, so a topic of plain tokens maps
one to one onto a subject and the wildcards of a pattern are NATS wildcards.
Any other token (empty, or with a space, a ``*`` inside a word, a ``~``,
anything beyond ASCII) becomes one opaque token: ``~`` and the token's UTF-8
in unpadded base64url. It is reversible, never equal to a plain token, and
never a wildcard, while ``*`` and ``>`` still match it as they match any token
locally: a cross-host ``>`` and a local ``>`` see the same topics.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "MAX_SUBJECT_BYTES",
    "Subjects",
    "escape_token",
    "redact_url",
    "unescape_token",
]

MAX_SUBJECT_BYTES = 3584
"""Longest subject the backplane sends: the broker's default ``max_control_line``
(4,096 bytes, which a ``PUB`` / ``MSG`` line must fit in) less 512 bytes for the
rest of that line (verb, reply subject, sizes)."""

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")
_PLAIN_TOPIC = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_ESCAPE = "~"
_CACHE_LIMIT = 4096


def escape_token(token: str) -> str:
    """``token`` as one subject token: itself when plain, else ``~`` + base64url of its UTF-8."""
    if _PLAIN.fullmatch(token):
        return token
    raw = token.encode("utf-8", "surrogatepass")
    return _ESCAPE + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unescape_token(token: str) -> str:
    """The topic token a subject token stands for (``escape_token`` reversed).

    Raises:
        ValueError: ``token`` is neither plain nor a well-formed opaque token.
    """
    if not token.startswith(_ESCAPE):
        return token
    body = token[1:]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return raw.decode("utf-8", "surrogatepass")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"malformed opaque subject token {token[:40]!r}") from exc


def redact_url(url: str) -> str:
    """``url`` without its user name and password (for logs, events and ``repr``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


class Subjects:
    """The subjects of one namespace, and the topics they stand for.

    Args:
        namespace: One or more plain tokens separated by ``.`` (``"app"``,
            ``"acme.prod"``).
        server_id: This server's id (any string; escaped as one token).

    Raises:
        ValueError: The namespace is empty or not made of plain tokens.
    """

    def __init__(self, namespace: str, server_id: str) -> None:
        if not isinstance(namespace, str) or not _PLAIN_TOPIC.fullmatch(namespace):
            raise ValueError(
                f"namespace must be one or more tokens of [A-Za-z0-9_-] separated by '.'; "
                f"got {namespace!r}"
            )
        self.namespace = namespace
        self.topic_prefix = f"{namespace}.t."
        self.service_prefix = f"{namespace}.s."
        self.survey = f"{namespace}.v"
        self.heartbeat = f"{namespace}.h"
        self.broadcast = f"{namespace}.b"
        self.server_token = escape_token(server_id)
        self.reply_prefix = f"{namespace}.r.{self.server_token}."
        self.replies = f"{self.reply_prefix}*"
        self._topics: dict[str, str] = {}
        self._subjects: dict[str, str] = {}

    def reply(self, token: int | str) -> str:
        """The subject on which this server gets the answer with ``token``."""
        return f"{self.reply_prefix}{token}"

    def cancels_of(self, server_token: str) -> str:
        """The subject on which the server with ``server_token`` takes cancellations."""
        return f"{self.namespace}.r.{server_token}.k"

    # -- topics ---------------------------------------------------------

    def topic(self, topic: str) -> str:
        """The subject a publish to ``topic`` goes to.

        Raises:
            ValueError: ``topic`` holds a wildcard token, or its subject is
                longer than ``MAX_SUBJECT_BYTES``.
        """
        subject = self._subjects.get(topic)
        if subject is not None:
            return subject
        if _PLAIN_TOPIC.fullmatch(topic):
            subject = self.topic_prefix + topic
        else:
            tokens = topic.split(".")
            if "*" in tokens or ">" in tokens:
                raise ValueError(f"cannot publish to a wildcard topic: {topic[:80]!r}")
            subject = self.topic_prefix + ".".join(map(escape_token, tokens))
        self._check_length(subject, "topic", topic)
        if len(self._subjects) >= _CACHE_LIMIT:
            self._subjects.clear()
        self._subjects[topic] = subject
        return subject

    def pattern(self, pattern: str) -> str:
        """The subscription subject for ``pattern`` (an exact topic, or one with
        ``*`` tokens and a last ``>`` token).

        Raises:
            ValueError: ``>`` is not the last token, or the subject is too long.
        """
        if _PLAIN_TOPIC.fullmatch(pattern):
            subject = self.topic_prefix + pattern
        else:
            tokens = pattern.split(".")
            if ">" in tokens[:-1]:
                raise ValueError(f"'>' must be the last token of a pattern: {pattern[:80]!r}")
            subject = self.topic_prefix + ".".join(
                t if t in ("*", ">") else escape_token(t) for t in tokens
            )
        self._check_length(subject, "pattern", pattern)
        return subject

    def topic_of(self, subject: str) -> str:
        """The topic a subject under ``<ns>.t.`` stands for.

        Raises:
            ValueError: The subject is not a topic subject of this namespace,
                or holds a malformed opaque token.
        """
        topic = self._topics.get(subject)
        if topic is not None:
            return topic
        if not subject.startswith(self.topic_prefix):
            raise ValueError(f"not a topic subject of namespace {self.namespace!r}")
        rest = subject[len(self.topic_prefix) :]
        topic = ".".join(map(unescape_token, rest.split("."))) if _ESCAPE in rest else rest
        if len(self._topics) >= _CACHE_LIMIT:
            self._topics.clear()
        self._topics[subject] = topic
        return topic

    # -- services -------------------------------------------------------

    def service(self, name: str) -> str:
        """The subject of the workers of service ``name`` (every token literal).

        Raises:
            ValueError: The subject is too long.
        """
        # "*" and ">" are not plain: escape_token makes them literal, never wildcards.
        subject = self.service_prefix + ".".join(map(escape_token, name.split(".")))
        self._check_length(subject, "service", name)
        return subject

    def service_of(self, subject: str) -> str:
        """The service name a subject under ``<ns>.s.`` stands for."""
        if not subject.startswith(self.service_prefix):
            raise ValueError(f"not a service subject of namespace {self.namespace!r}")
        rest = subject[len(self.service_prefix) :]
        return ".".join(map(unescape_token, rest.split(".")))

    @staticmethod
    def _check_length(subject: str, what: str, name: str) -> None:
        size = len(subject.encode("utf-8"))
        if size > MAX_SUBJECT_BYTES:
            raise ValueError(
                f"{what} {name[:40]!r}… is {size} bytes as a NATS subject (namespace and "
                f"encoding included), over the {MAX_SUBJECT_BYTES} the broker takes "
                f"(its max_control_line of 4096 less room for the rest of the line)"
            )
