"""A Chroma server's (or Chroma Cloud's) client whose every request is answered within a bound, or fails naming it.

chromadb's HTTP client waits for an answer without end (its httpx session is made with `timeout=None`, and no
setting reaches it): a server that is gone without a word (a dropped link, a paused host, a partition) would hold
a run, a sensor's tick or a query for ever. Here each call of the client, and of each collection it hands out,
runs on a thread of its own while the caller waits at most `timeout_s` (`chroma.timeout_seconds`); past it the
caller gets `ChromaTimeout`, which names the store and the setting, and the key that made the call fails alone.

Once a request has gone unanswered, the calls that follow within the next `timeout_s` fail at once with the same
words (a run's other keys do not each wait out the bound against a store that is not answering); after that the
next call is tried again. The request that went unanswered is not taken back: it may still reach the server when
the link returns. A sync re-checks what it wrote and the next sync of the key writes it again, so the chunks end
exact either way (test_partitions.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

_WHY_AND_AFTER = "the server is gone, paused or cut off; what was not written is written by the next sync or retry"


class ChromaTimeout(TimeoutError):
    """A request to a Chroma server (or Chroma Cloud) that was not answered within chroma.timeout_seconds."""


class _Silence:
    """When a request to the store last went unanswered past the bound (monotonic seconds), shared by the
    client and every collection it handed out."""

    def __init__(self, store: str, timeout_s: float) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.since: float | None = None
        self.lock = threading.Lock()

    def unanswered(self, what: str) -> ChromaTimeout:
        return ChromaTimeout(
            f"{self.store} did not answer ({what}) within {self.timeout_s:g} s (chroma.timeout_seconds): "
            f"{_WHY_AND_AFTER}"
        )

    def check(self, what: str) -> None:
        """Fail at once, without sending, while the last unanswered request is less than the bound ago."""
        with self.lock:
            if self.since is not None and time.monotonic() - self.since < self.timeout_s:
                waited = time.monotonic() - self.since + self.timeout_s
                raise ChromaTimeout(
                    f"{self.store} has not answered a request for {waited:.0f} s (chroma.timeout_seconds "
                    f"{self.timeout_s:g}), so {what} was not sent: {_WHY_AND_AFTER}"
                )

    def went_unanswered(self) -> None:
        with self.lock:
            self.since = time.monotonic()


def causes(error: BaseException) -> list[BaseException]:
    """`error` and what it was raised from or during, first to last."""
    chain = [error]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    return chain


def could_not_ask(error: BaseException) -> bool:
    """Whether `error` says the store could not be asked (unreachable, refused, not answering: an OS or network
    error anywhere in its chain), not what it answered."""
    import httpx

    return any(isinstance(link, (OSError, httpx.TransportError)) for link in causes(error))


def _call(silence: _Silence, what: str, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    silence.check(what)
    outcome: list[Any] = []
    done = threading.Event()

    def call() -> None:
        try:
            outcome.append((True, function(*args, **kwargs)))
        except BaseException as error:  # handed to the caller as is
            outcome.append((False, error))
        finally:
            done.set()

    # A daemon thread: one left waiting on a silent server never holds up the process's exit.
    threading.Thread(target=call, name=f"s3sync-chroma-{what}", daemon=True).start()
    if not done.wait(silence.timeout_s):
        silence.went_unanswered()
        raise silence.unanswered(what)
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return _bounded(value, silence)


def _bounded(value: Any, silence: _Silence) -> Any:
    """What a bounded call hands back: a collection (get_collection, list_collections, ...) bounded in turn."""
    from chromadb.api.models.Collection import Collection

    if isinstance(value, Collection):
        return Bounded(value, silence)
    if isinstance(value, list) and any(isinstance(item, Collection) for item in value):
        return [Bounded(item, silence) if isinstance(item, Collection) else item for item in value]
    return value


class Bounded:
    """The client (or a collection) with each method call bounded (see the module's docstring); attributes that
    are not methods (a collection's name, id, metadata) are read as they are."""

    def __init__(self, wrapped: Any, silence: _Silence) -> None:
        object.__setattr__(self, "__wrapped__", wrapped)
        object.__setattr__(self, "_silence", silence)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.__wrapped__, name)
        if not callable(value) or isinstance(value, type):
            return value
        silence = self._silence

        def bounded_call(*args: Any, **kwargs: Any) -> Any:
            return _call(silence, name, value, args, kwargs)

        return bounded_call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__wrapped__, name, value)

    def __eq__(self, other: object) -> bool:
        other = other.__wrapped__ if isinstance(other, Bounded) else other
        return bool(self.__wrapped__ == other)

    def __hash__(self) -> int:
        return hash(self.__wrapped__)

    def __repr__(self) -> str:
        return f"Bounded({self.__wrapped__!r})"


def bounded_client(make: Callable[[], Any], store: str, timeout_s: float) -> Any:
    """The client `make` makes (a chromadb HttpClient or CloudClient, which asks the server as it is made), made
    within the bound, with every request after bounded by `timeout_s`; `store` names it in the errors."""
    silence = _Silence(store, timeout_s)
    return Bounded(_call(silence, "opening a client", make, (), {}), silence)
