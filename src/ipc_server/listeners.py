"""The listener signatures of the built-in events, for type checkers (docs/guide.md, Events).

``on`` and ``once`` of the servers and clients are overloaded per event
name, so that ``mypy --strict`` rejects a misspelt built-in event and a
listener of the wrong shape (wrong arity, wrong argument types, a coroutine
function where the blocking client takes plain ones). A server has no
other events. A client also has one event per topic: any other name, with
a listener that takes the message.

Nothing here runs: the overloads exist only for type checkers
(``TYPE_CHECKING``), the classes have no code of their own, and the methods
that run are ``events.EventEmitter``'s (the blocking server's are its own
forwarders).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from .events import EventEmitter

if TYPE_CHECKING:
    from .clientcore import IPCClientStatus
    from .events import Respond, Stop

__all__ = ["BlockingClientEvents", "ClientEvents", "ServerListeners"]

C = TypeVar("C")
"""The server's connection type: ``server.IPCConnection``, given as a parameter
so that this module does not import the server."""

if TYPE_CHECKING:
    ServerEvent = Literal["ready", "error", "connect", "disconnect", "close", "message", "request"]
    """The names of a server's events (it has no others)."""

    # A server's listeners, plain functions or coroutine functions. A type
    # variable's bound cannot use C, so these are aliases, and the decorator
    # form gives the function back typed as its event's listener.
    _ServerReady = Callable[[str], object]
    _ServerError = Callable[[BaseException, C | None], object]
    _ServerPeer = Callable[[C, Any], object]
    _ServerClose = Callable[[], object]
    _ServerMessage = Callable[[Any, C], object]
    _ServerRequest = Callable[[Any, Respond, C], object]

# The asyncio client's listeners: plain functions or coroutine functions.
ReadyListener = TypeVar("ReadyListener", bound="Callable[[dict[str, Any]], object]")
ErrorListener = TypeVar("ErrorListener", bound="Callable[[BaseException], object]")
CloseListener = TypeVar("CloseListener", bound="Callable[[Any], object]")
StatusListener = TypeVar("StatusListener", bound="Callable[[IPCClientStatus], object]")
MessageListener = TypeVar("MessageListener", bound="Callable[[Any], object]")
RequestListener = TypeVar("RequestListener", bound="Callable[[Any, Respond], object]")
# A topic's listener gets the message; a wildcard pattern's, the message and its topic.
TopicListener = TypeVar(
    "TopicListener", bound="Callable[[Any], object] | Callable[[Any, str], object]"
)

# The blocking client's listeners: plain functions, returning None or STOP.
# A request listener may also return what respond(x) returned (an awaitable
# that is already complete), so there a coroutine function is not caught
# here; on() raises TypeError for it.
PlainReadyListener = TypeVar("PlainReadyListener", bound="Callable[[dict[str, Any]], Stop | None]")
PlainErrorListener = TypeVar("PlainErrorListener", bound="Callable[[BaseException], Stop | None]")
PlainCloseListener = TypeVar("PlainCloseListener", bound="Callable[[Any], Stop | None]")
PlainStatusListener = TypeVar(
    "PlainStatusListener", bound="Callable[[IPCClientStatus], Stop | None]"
)
PlainMessageListener = TypeVar("PlainMessageListener", bound="Callable[[Any], Stop | None]")
PlainRequestListener = TypeVar(
    "PlainRequestListener", bound="Callable[[Any, Respond], Stop | Awaitable[None] | None]"
)
PlainTopicListener = TypeVar(
    "PlainTopicListener",
    bound="Callable[[Any], Stop | None] | Callable[[Any, str], Stop | None]",
)


class ServerListeners(Generic[C]):
    """``on`` and ``once`` of a server (asyncio or blocking), for its seven events only.

    A base of both servers, before ``EventEmitter`` in the asyncio one's. It
    is not an emitter itself, so that the blocking server, which forwards to
    the asyncio one, can share it.
    """

    if TYPE_CHECKING:

        @overload
        def on(self, event: Literal["ready"]) -> Callable[[_ServerReady], _ServerReady]: ...
        @overload
        def on(self, event: Literal["error"]) -> Callable[[_ServerError[C]], _ServerError[C]]: ...
        @overload
        def on(
            self, event: Literal["connect", "disconnect"]
        ) -> Callable[[_ServerPeer[C]], _ServerPeer[C]]: ...
        @overload
        def on(self, event: Literal["close"]) -> Callable[[_ServerClose], _ServerClose]: ...
        @overload
        def on(
            self, event: Literal["message"]
        ) -> Callable[[_ServerMessage[C]], _ServerMessage[C]]: ...
        @overload
        def on(
            self, event: Literal["request"]
        ) -> Callable[[_ServerRequest[C]], _ServerRequest[C]]: ...
        @overload
        def on(self, event: Literal["ready"], handler: _ServerReady) -> _ServerReady: ...
        @overload
        def on(self, event: Literal["error"], handler: _ServerError[C]) -> _ServerError[C]: ...
        @overload
        def on(
            self, event: Literal["connect", "disconnect"], handler: _ServerPeer[C]
        ) -> _ServerPeer[C]: ...
        @overload
        def on(self, event: Literal["close"], handler: _ServerClose) -> _ServerClose: ...
        @overload
        def on(
            self, event: Literal["message"], handler: _ServerMessage[C]
        ) -> _ServerMessage[C]: ...
        @overload
        def on(
            self, event: Literal["request"], handler: _ServerRequest[C]
        ) -> _ServerRequest[C]: ...
        def on(self, event: ServerEvent, handler: Callable[..., object] | None = None) -> Any:
            """Add ``handler`` for ``event``; without a handler, return a decorator.

            ``event`` is one of the server's seven events; a misspelt one, or
            a listener of another shape than its event's, fails type checking
            (docs/guide.md, Typed listeners).
            """

        @overload
        def once(self, event: Literal["ready"]) -> Callable[[_ServerReady], _ServerReady]: ...
        @overload
        def once(self, event: Literal["error"]) -> Callable[[_ServerError[C]], _ServerError[C]]: ...
        @overload
        def once(
            self, event: Literal["connect", "disconnect"]
        ) -> Callable[[_ServerPeer[C]], _ServerPeer[C]]: ...
        @overload
        def once(self, event: Literal["close"]) -> Callable[[_ServerClose], _ServerClose]: ...
        @overload
        def once(
            self, event: Literal["message"]
        ) -> Callable[[_ServerMessage[C]], _ServerMessage[C]]: ...
        @overload
        def once(
            self, event: Literal["request"]
        ) -> Callable[[_ServerRequest[C]], _ServerRequest[C]]: ...
        @overload
        def once(self, event: Literal["ready"], handler: _ServerReady) -> _ServerReady: ...
        @overload
        def once(self, event: Literal["error"], handler: _ServerError[C]) -> _ServerError[C]: ...
        @overload
        def once(
            self, event: Literal["connect", "disconnect"], handler: _ServerPeer[C]
        ) -> _ServerPeer[C]: ...
        @overload
        def once(self, event: Literal["close"], handler: _ServerClose) -> _ServerClose: ...
        @overload
        def once(
            self, event: Literal["message"], handler: _ServerMessage[C]
        ) -> _ServerMessage[C]: ...
        @overload
        def once(
            self, event: Literal["request"], handler: _ServerRequest[C]
        ) -> _ServerRequest[C]: ...
        def once(self, event: ServerEvent, handler: Callable[..., object] | None = None) -> Any:
            """Like ``on``, but the handler is removed after its first call."""


class ClientEvents(EventEmitter):
    """The asyncio client's emitter: ``on``/``once`` typed for its events and its topics.

    The built-in names come before the topic overload (any ``str``), which
    they overlap on purpose; and they are narrower than ``EventEmitter``'s
    (hence the ignores).
    """

    if TYPE_CHECKING:

        @overload  # type: ignore[override]
        def on(self, event: Literal["ready"]) -> Callable[[ReadyListener], ReadyListener]: ...  # type: ignore[overload-overlap]
        @overload
        def on(self, event: Literal["error"]) -> Callable[[ErrorListener], ErrorListener]: ...  # type: ignore[overload-overlap]
        @overload
        def on(self, event: Literal["close"]) -> Callable[[CloseListener], CloseListener]: ...  # type: ignore[overload-overlap]
        @overload
        def on(self, event: Literal["status"]) -> Callable[[StatusListener], StatusListener]: ...  # type: ignore[overload-overlap]
        @overload
        def on(self, event: Literal["message"]) -> Callable[[MessageListener], MessageListener]: ...  # type: ignore[overload-overlap]
        @overload
        def on(self, event: Literal["request"]) -> Callable[[RequestListener], RequestListener]: ...  # type: ignore[overload-overlap]
        @overload
        def on(self, event: str) -> Callable[[TopicListener], TopicListener]: ...
        @overload
        def on(self, event: Literal["ready"], handler: ReadyListener) -> ReadyListener: ...
        @overload
        def on(self, event: Literal["error"], handler: ErrorListener) -> ErrorListener: ...
        @overload
        def on(self, event: Literal["close"], handler: CloseListener) -> CloseListener: ...
        @overload
        def on(self, event: Literal["status"], handler: StatusListener) -> StatusListener: ...
        @overload
        def on(self, event: Literal["message"], handler: MessageListener) -> MessageListener: ...
        @overload
        def on(self, event: Literal["request"], handler: RequestListener) -> RequestListener: ...
        @overload
        def on(self, event: str, handler: TopicListener) -> TopicListener: ...
        def on(self, event: str, handler: Callable[..., object] | None = None) -> Any:
            """Add ``handler`` for ``event``; without a handler, return a decorator.

            ``event`` is a built-in event or a topic; a listener of another
            shape than its event's fails type checking (docs/guide.md, Typed
            listeners).
            """

        @overload  # type: ignore[override]
        def once(self, event: Literal["ready"]) -> Callable[[ReadyListener], ReadyListener]: ...  # type: ignore[overload-overlap]
        @overload
        def once(self, event: Literal["error"]) -> Callable[[ErrorListener], ErrorListener]: ...  # type: ignore[overload-overlap]
        @overload
        def once(self, event: Literal["close"]) -> Callable[[CloseListener], CloseListener]: ...  # type: ignore[overload-overlap]
        @overload
        def once(self, event: Literal["status"]) -> Callable[[StatusListener], StatusListener]: ...  # type: ignore[overload-overlap]
        @overload
        def once(  # type: ignore[overload-overlap]
            self, event: Literal["message"]
        ) -> Callable[[MessageListener], MessageListener]: ...
        @overload
        def once(  # type: ignore[overload-overlap]
            self, event: Literal["request"]
        ) -> Callable[[RequestListener], RequestListener]: ...
        @overload
        def once(self, event: str) -> Callable[[TopicListener], TopicListener]: ...
        @overload
        def once(self, event: Literal["ready"], handler: ReadyListener) -> ReadyListener: ...
        @overload
        def once(self, event: Literal["error"], handler: ErrorListener) -> ErrorListener: ...
        @overload
        def once(self, event: Literal["close"], handler: CloseListener) -> CloseListener: ...
        @overload
        def once(self, event: Literal["status"], handler: StatusListener) -> StatusListener: ...
        @overload
        def once(self, event: Literal["message"], handler: MessageListener) -> MessageListener: ...
        @overload
        def once(self, event: Literal["request"], handler: RequestListener) -> RequestListener: ...
        @overload
        def once(self, event: str, handler: TopicListener) -> TopicListener: ...
        def once(self, event: str, handler: Callable[..., object] | None = None) -> Any:
            """Like ``on``, but the handler is removed after its first call."""


class BlockingClientEvents(EventEmitter):
    """The blocking client's emitter: ``on``/``once`` typed for plain-function listeners.

    Built the same way as ``ClientEvents``.
    """

    if TYPE_CHECKING:

        @overload  # type: ignore[override]
        def on(  # type: ignore[overload-overlap]
            self, event: Literal["ready"]
        ) -> Callable[[PlainReadyListener], PlainReadyListener]: ...
        @overload
        def on(  # type: ignore[overload-overlap]
            self, event: Literal["error"]
        ) -> Callable[[PlainErrorListener], PlainErrorListener]: ...
        @overload
        def on(  # type: ignore[overload-overlap]
            self, event: Literal["close"]
        ) -> Callable[[PlainCloseListener], PlainCloseListener]: ...
        @overload
        def on(  # type: ignore[overload-overlap]
            self, event: Literal["status"]
        ) -> Callable[[PlainStatusListener], PlainStatusListener]: ...
        @overload
        def on(  # type: ignore[overload-overlap]
            self, event: Literal["message"]
        ) -> Callable[[PlainMessageListener], PlainMessageListener]: ...
        @overload
        def on(  # type: ignore[overload-overlap]
            self, event: Literal["request"]
        ) -> Callable[[PlainRequestListener], PlainRequestListener]: ...
        @overload
        def on(self, event: str) -> Callable[[PlainTopicListener], PlainTopicListener]: ...
        @overload
        def on(
            self, event: Literal["ready"], handler: PlainReadyListener
        ) -> PlainReadyListener: ...
        @overload
        def on(
            self, event: Literal["error"], handler: PlainErrorListener
        ) -> PlainErrorListener: ...
        @overload
        def on(
            self, event: Literal["close"], handler: PlainCloseListener
        ) -> PlainCloseListener: ...
        @overload
        def on(
            self, event: Literal["status"], handler: PlainStatusListener
        ) -> PlainStatusListener: ...
        @overload
        def on(
            self, event: Literal["message"], handler: PlainMessageListener
        ) -> PlainMessageListener: ...
        @overload
        def on(
            self, event: Literal["request"], handler: PlainRequestListener
        ) -> PlainRequestListener: ...
        @overload
        def on(self, event: str, handler: PlainTopicListener) -> PlainTopicListener: ...
        def on(self, event: str, handler: Callable[..., object] | None = None) -> Any:
            """Add ``handler`` for ``event``; without a handler, return a decorator.

            ``event`` is a built-in event or a topic; a listener of another
            shape than its event's fails type checking (docs/guide.md, Typed
            listeners).
            """

        @overload  # type: ignore[override]
        def once(  # type: ignore[overload-overlap]
            self, event: Literal["ready"]
        ) -> Callable[[PlainReadyListener], PlainReadyListener]: ...
        @overload
        def once(  # type: ignore[overload-overlap]
            self, event: Literal["error"]
        ) -> Callable[[PlainErrorListener], PlainErrorListener]: ...
        @overload
        def once(  # type: ignore[overload-overlap]
            self, event: Literal["close"]
        ) -> Callable[[PlainCloseListener], PlainCloseListener]: ...
        @overload
        def once(  # type: ignore[overload-overlap]
            self, event: Literal["status"]
        ) -> Callable[[PlainStatusListener], PlainStatusListener]: ...
        @overload
        def once(  # type: ignore[overload-overlap]
            self, event: Literal["message"]
        ) -> Callable[[PlainMessageListener], PlainMessageListener]: ...
        @overload
        def once(  # type: ignore[overload-overlap]
            self, event: Literal["request"]
        ) -> Callable[[PlainRequestListener], PlainRequestListener]: ...
        @overload
        def once(self, event: str) -> Callable[[PlainTopicListener], PlainTopicListener]: ...
        @overload
        def once(
            self, event: Literal["ready"], handler: PlainReadyListener
        ) -> PlainReadyListener: ...
        @overload
        def once(
            self, event: Literal["error"], handler: PlainErrorListener
        ) -> PlainErrorListener: ...
        @overload
        def once(
            self, event: Literal["close"], handler: PlainCloseListener
        ) -> PlainCloseListener: ...
        @overload
        def once(
            self, event: Literal["status"], handler: PlainStatusListener
        ) -> PlainStatusListener: ...
        @overload
        def once(
            self, event: Literal["message"], handler: PlainMessageListener
        ) -> PlainMessageListener: ...
        @overload
        def once(
            self, event: Literal["request"], handler: PlainRequestListener
        ) -> PlainRequestListener: ...
        @overload
        def once(self, event: str, handler: PlainTopicListener) -> PlainTopicListener: ...
        def once(self, event: str, handler: Callable[..., object] | None = None) -> Any:
            """Like ``on``, but the handler is removed after its first call."""
