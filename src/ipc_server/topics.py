"""Topics, patterns and who is subscribed to what: the registry a server matches publishes with.

Topics are ``.``-separated, non-empty tokens. In a subscription, the token
``*`` matches exactly one token and ``>`` (last only) one or more; ``>``
alone matches every topic (as NATS subjects do, so that a backplane can map
them one to one). A subscription may belong to a worker group: a message
then goes to one member of each group (round-robin), besides every plain
subscriber.

``TopicRegistry`` is I/O-free and generic over the subscriber (the server's
connections). Exact subscriptions are found with one dict lookup; patterns
live in a token trie, walked once per publish, so a publish among 10,000
exact and 1,000 wildcard subscriptions costs about what it costs among ten.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

__all__ = [
    "Group",
    "TopicRegistry",
    "check_pattern",
    "check_topic",
    "is_pattern",
    "matches",
    "pattern_error",
    "publishable",
    "service_error",
]

S = TypeVar("S", bound=Hashable)

_WILD = frozenset("*>")


def pattern_error(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid subscription (``a.>.b``, ``a..b``, ``*x``), or None."""
    if not isinstance(pattern, str) or not pattern:
        return "a topic is one or more non-empty tokens separated by '.'"
    tokens = pattern.split(".")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if not token:
            return f"empty token in {pattern!r}"
        if token == ">":
            if i != last:
                return f"'>' may only be the last token, not in {pattern!r}"
        elif token != "*" and not _WILD.isdisjoint(token):
            return f"'*' and '>' are whole tokens, not part of {token!r} in {pattern!r}"
    return None


def check_pattern(pattern: str) -> None:
    """Raise ``ValueError`` unless ``pattern`` is a valid subscription (exact or wildcard)."""
    error = pattern_error(pattern)
    if error is not None:
        raise ValueError(f"invalid topic pattern: {error}")


def check_topic(topic: str) -> None:
    """Raise ``ValueError`` unless ``topic`` may be published to: tokens, and no wildcard.

    Raises:
        TypeError: ``topic`` is not a str.
    """
    if not isinstance(topic, str):
        raise TypeError(f"topic must be a str, not {type(topic).__name__}")
    error = pattern_error(topic)
    if error is not None:
        raise ValueError(f"invalid topic: {error}")
    if is_pattern(topic):
        raise ValueError(f"cannot publish to a pattern: {topic!r} has a wildcard token")


def publishable(topic: str) -> bool:
    """Whether ``topic`` may be published to: valid tokens, none a wildcard."""
    return pattern_error(topic) is None and not is_pattern(topic)


def is_pattern(pattern: str) -> bool:
    """Whether ``pattern`` has a wildcard token (``*`` or ``>``)."""
    if _WILD.isdisjoint(pattern):
        return False
    return any(token in ("*", ">") for token in pattern.split("."))


def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` (concrete) matches ``pattern`` (exact or wildcard)."""
    if pattern == topic:
        return True
    want = pattern.split(".")
    have = topic.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def service_error(name: object) -> str | None:
    """Why ``name`` cannot name a service (names follow the topic rules, without wildcards)."""
    if not isinstance(name, str):
        return f"a service name is a str, not {type(name).__name__}"
    error = pattern_error(name)
    if error is not None:
        return error
    if not publishable(name):
        return f"a service name has no wildcard token: {name!r}"
    return None


class Group(Generic[S]):
    """The members of one worker group of one pattern; each message goes to one of them."""

    __slots__ = ("members", "name", "next")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[S, None] = {}
        self.next = 0  # round-robin position

    def pick(self, eligible: Callable[[S], bool] | None) -> S | None:
        """The next member in turn, skipping those not ``eligible`` (over their pending bound);
        if none is, the next in turn anyway (nothing is dropped)."""
        members = list(self.members)
        if not members:
            return None
        count = len(members)
        start = self.next % count
        for step in range(count):
            member = members[(start + step) % count]
            if eligible is None or eligible(member):
                self.next = start + step + 1
                return member
        self.next = start + 1
        return members[start]


class _Node(Generic[S]):
    """One level of the pattern trie."""

    __slots__ = ("children", "here", "rest", "star")

    def __init__(self) -> None:
        self.children: dict[str, _Node[S]] = {}
        self.star: _Node[S] | None = None
        # What a pattern ending here (``here``) or ending with ``>`` here (``rest``) holds:
        # plain subscribers, and groups by name.
        self.here: dict[S | Group[S], None] = {}
        self.rest: dict[S | Group[S], None] = {}

    def empty(self) -> bool:
        return not (self.children or self.star or self.here or self.rest)


Key = tuple[str, str | None]  # (pattern, group or None)


class TopicRegistry(Generic[S]):
    """Subscriptions, plain and by worker group, and their bounds.

    Args:
        max_per_subscriber: Subscriptions one subscriber may hold (None: no bound).
        max_length: Longest pattern, in characters (None: no bound).
    """

    def __init__(self, max_per_subscriber: int | None, max_length: int | None) -> None:
        self.max_per_subscriber = max_per_subscriber
        self.max_length = max_length
        self._exact: dict[str, dict[S | Group[S], None]] = {}  # patterns without wildcards
        self._root: _Node[S] = _Node()
        self._wildcards = 0  # patterns in the trie
        self._groups: dict[Key, Group[S]] = {}
        self._held: dict[S, set[Key]] = {}  # what each subscriber holds

    # ------------------------------------------------------------------ bounds

    def refusal(
        self, who: S, patterns: list[str], group: str | None = None
    ) -> tuple[str | None, str] | None:
        """Why ``who`` may not subscribe to ``patterns``: ``(option, reason)``, or None.

        ``option`` is the bound crossed, or None for an invalid pattern.
        """
        longest = self.max_length
        for pattern in patterns:
            error = pattern_error(pattern)
            if error is not None:
                return None, error
            if longest is not None and len(pattern) > longest:
                return "max_topic_length", (
                    f"a topic of {len(pattern)} characters, over max_topic_length={longest}"
                )
        most = self.max_per_subscriber
        held = self._held.get(who, ())
        # A list longer than the bound cannot fit: no set is built for it.
        if most is not None and len(held) + len(patterns) > most:
            keys = {(p, group) for p in patterns} if len(patterns) <= most else set()
            total = len(set(held) | keys) if keys else len(patterns)
            if total > most:
                return "max_topics_per_connection", (
                    f"{total} topics, over max_topics_per_connection={most}"
                )
        return None

    # ------------------------------------------------------------------ changes

    def subscribe(self, who: S, patterns: list[str], group: str | None = None) -> None:
        """``who`` gets what is published to ``patterns`` (once each, however often asked);
        with ``group``, as a member of that worker group."""
        held = self._held.setdefault(who, set())
        for pattern in patterns:
            key = (pattern, group)
            if key in held:
                continue
            held.add(key)
            entry: S | Group[S] = who
            if group is not None:
                found = self._groups.get(key)
                if found is None:
                    found = self._groups[key] = Group(group)
                found.members[who] = None
                if len(found.members) > 1:
                    continue  # the group is in place already
                entry = found
            slot = self._slot(pattern, create=True)
            assert slot is not None
            slot[entry] = None

    def unsubscribe(self, who: S, patterns: list[str], group: str | None = None) -> bool:
        """``who`` leaves ``patterns`` (in ``group``); True if it held any of them."""
        held = self._held.get(who)
        if not held:
            return False
        left = False
        for pattern in patterns:
            key = (pattern, group)
            if key in held:
                held.discard(key)
                self._drop(who, key)
                left = True
        if not held:
            del self._held[who]
        return left

    def forget(self, who: S) -> None:
        """``who`` is gone: it leaves every subscription and group."""
        for key in self._held.pop(who, ()):
            self._drop(who, key)

    def _drop(self, who: S, key: Key) -> None:
        pattern, group = key
        entry: S | Group[S] = who
        if group is not None:
            found = self._groups.get(key)
            if found is None:
                return
            found.members.pop(who, None)
            if found.members:
                return
            del self._groups[key]
            entry = found
        slot = self._slot(pattern, create=False)
        if slot is not None:
            slot.pop(entry, None)
            if not slot:
                self._prune(pattern)

    def _slot(self, pattern: str, *, create: bool) -> dict[S | Group[S], None] | None:
        """Where ``pattern``'s entries live (None if absent and not ``create``)."""
        if not is_pattern(pattern):
            slot = self._exact.get(pattern)
            if slot is None and create:
                slot = self._exact[pattern] = {}
            return slot
        node = self._root
        tokens = pattern.split(".")
        for token in tokens[:-1] if tokens[-1] == ">" else tokens:
            nxt = node.star if token == "*" else node.children.get(token)
            if nxt is None:
                if not create:
                    return None
                nxt = _Node()
                if token == "*":
                    node.star = nxt
                else:
                    node.children[token] = nxt
            node = nxt
        slot = node.rest if tokens[-1] == ">" else node.here
        if create and not slot:
            self._wildcards += 1
        return slot

    def _prune(self, pattern: str) -> None:
        """``pattern``'s slot went empty: drop it, and the trie nodes nothing uses any more."""
        if not is_pattern(pattern):
            self._exact.pop(pattern, None)
            return
        self._wildcards -= 1
        tokens = pattern.split(".")
        path: list[tuple[_Node[S], str]] = []
        node = self._root
        for token in tokens[:-1] if tokens[-1] == ">" else tokens:
            path.append((node, token))
            nxt = node.star if token == "*" else node.children.get(token)
            if nxt is None:
                return
            node = nxt
        for parent, token in reversed(path):
            child = parent.star if token == "*" else parent.children.get(token)
            if child is None or not child.empty():
                break
            if token == "*":
                parent.star = None
            else:
                del parent.children[token]

    # ------------------------------------------------------------------ matching

    def subscribers(self, topic: str, eligible: Callable[[S], bool] | None = None) -> list[S]:
        """Who gets a message published to ``topic``: every plain subscriber whose pattern
        matches, and one member of each matching group; each once."""
        exact = self._exact.get(topic)
        if not self._wildcards:
            if not exact:
                return []
            if not self._groups:
                return list(exact)  # type: ignore[arg-type]  # no group: subscribers only
            found: dict[S | Group[S], None] = dict(exact)
        else:
            found = dict(exact) if exact else {}
            self._match(self._root, topic.split("."), 0, found)
        if not self._groups:
            return list(found)  # type: ignore[arg-type]
        chosen: dict[S, None] = {}
        for entry in found:
            if entry.__class__ is Group:
                member = entry.pick(eligible)
                if member is not None:
                    chosen[member] = None
            else:
                chosen[entry] = None  # type: ignore[index]
        return list(chosen)

    def _match(
        self, node: _Node[S], tokens: list[str], i: int, found: dict[S | Group[S], None]
    ) -> None:
        if node.rest and i < len(tokens):
            found.update(node.rest)
        if i == len(tokens):
            if node.here:
                found.update(node.here)
            return
        child = node.children.get(tokens[i])
        if child is not None:
            self._match(child, tokens, i + 1, found)
        if node.star is not None:
            self._match(node.star, tokens, i + 1, found)

    # ------------------------------------------------------------------ what is there

    def topics_of(self, who: S) -> frozenset[str]:
        """The patterns ``who`` is subscribed to (plainly or in a group)."""
        return frozenset(pattern for pattern, _ in self._held.get(who, ()))

    def groups_of(self, pattern: str) -> dict[str, list[S]]:
        """The worker groups of ``pattern`` and their members."""
        return {
            group: list(found.members)
            for (p, group), found in self._groups.items()
            if p == pattern and group is not None
        }

    def topic_count(self) -> int:
        """How many patterns have at least one subscriber."""
        return len(set(self._patterns()))

    def subscription_count(self) -> int:
        """How many (subscriber, pattern, group) subscriptions there are."""
        return sum(len(keys) for keys in self._held.values())

    def _patterns(self) -> Iterator[str]:
        for keys in self._held.values():
            for pattern, _ in keys:
                yield pattern

    def snapshot(self) -> dict[str, list[S]]:
        """Each pattern with at least one subscriber, and its subscribers (group members too)."""
        out: dict[str, dict[S, None]] = {}
        for who, keys in self._held.items():
            for pattern, _ in keys:
                out.setdefault(pattern, {})[who] = None
        return {pattern: list(subs) for pattern, subs in out.items()}

    def clear(self) -> None:
        self._exact.clear()
        self._root = _Node()
        self._wildcards = 0
        self._groups.clear()
        self._held.clear()
