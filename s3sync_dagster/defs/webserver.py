"""The Dagster webserver whose GraphQL API starts a backfill (the call the UI's own Materialize dialog makes):
where it answers, and the call.

`webserver.url` says where, when set. Unset, the webserver is found as `dagster dev` and `dg dev` run it on
one machine: the port the webserver started by the `dagster dev` above this run listens on (`dg dev -p 3456`, or
the free port taken when 3000 is in use), else the port `DAGSTER_WEBSERVER_PORT` gives (how dagster-webserver
reads its options from the environment), else `dagster dev`'s default, http://localhost:3000. A deployment whose
webserver is another host's sets `webserver.url`; the error of a webserver that does not answer says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
import psutil

DEFAULT_URL = "http://localhost:3000"  # dagster dev's
WEBSERVER_MODULES = ("dagster_webserver", "dagster-webserver")  # as `dagster dev` starts it, or by its script


class WebserverError(RuntimeError):
    """The Dagster webserver did not answer, or answered with an error."""


def _host_for_url(host: str) -> str:
    """A listening address as a URL's host: any interface is reached on loopback, IPv6 in brackets."""
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _command(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.Error, OSError):
        return []


def _is_webserver(process: psutil.Process) -> bool:
    return any(part.endswith(WEBSERVER_MODULES) for part in _command(process)[:3])


def _is_dev(process: psutil.Process) -> bool:
    """`dagster dev` or `dg dev` (by its script, or `python -m dagster dev`)."""
    command = _command(process)
    return "dev" in command[1:4] and any(Path(part).name in ("dagster", "dg") for part in command[:3])


def _listening(process: psutil.Process) -> str | None:
    """The URL the process serves HTTP on: its listening TCP socket."""
    # psutil 6 renamed connections() to net_connections(); the package admits psutil 5.9.
    read = getattr(process, "net_connections", None) or process.connections
    try:
        sockets = read(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for socket in sockets:
        if socket.status == psutil.CONN_LISTEN and socket.laddr:
            return f"http://{_host_for_url(socket.laddr.ip)}:{socket.laddr.port}"
    return None


def webserver_beside_this_run() -> str | None:
    """The URL of the webserver that the `dagster dev` above this process started (it starts the webserver,
    the daemon and the code servers that launch runs as its children), if one listens; else None. Only a
    `dagster dev` or `dg dev` ancestor is looked under: another project's webserver elsewhere on the machine is
    never taken."""
    try:
        ancestors = psutil.Process().parents()
    except (psutil.Error, OSError):
        return None
    for ancestor in ancestors:
        if ancestor.pid <= 1 or not _is_dev(ancestor):
            continue
        try:
            children = ancestor.children()
        except (psutil.Error, OSError):
            continue
        for child in children:
            if _is_webserver(child) and (url := _listening(child)) is not None:
                return url
    return None


def found_url() -> tuple[str, str]:
    """Where the webserver answers when `webserver.url` is not set, and how that was found (for an error)."""
    beside = webserver_beside_this_run()
    if beside is not None:
        return beside, "the webserver that `dagster dev` / `dg dev` started above this run"
    port = os.environ.get("DAGSTER_WEBSERVER_PORT")
    if port:
        host = _host_for_url(os.environ.get("DAGSTER_WEBSERVER_HOST", ""))
        return f"http://{host}:{port}", "from DAGSTER_WEBSERVER_PORT"
    return DEFAULT_URL, "dagster dev's default: no webserver was found above this run"


class DagsterWebserver(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The Dagster webserver's GraphQL API, the one the UI itself calls (a backfill starts only there)."""

    url: str | None = None  # unset: found (found_url)
    api_token: str | None = None  # Dagster+ (or a proxy): sent as Dagster-Cloud-Api-Token, never logged

    def address(self) -> tuple[str, str]:
        """Where it answers, and how that is known."""
        if self.url:
            return self.url, "webserver.url"
        return found_url()

    def graphql(
        self,
        query: str,
        variables: dict[str, Any],
        timeout_seconds: float = 600,
        address: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """The answer's data; `address`: where it answers and how that is known, if already found."""
        import httpx

        url, how = address or self.address()
        headers = {"Dagster-Cloud-Api-Token": self.api_token} if self.api_token else {}
        endpoint = f"{url.rstrip('/')}/graphql"
        try:
            response = httpx.post(
                endpoint, json={"query": query, "variables": variables}, headers=headers, timeout=timeout_seconds
            )
        except httpx.HTTPError as error:
            raise WebserverError(
                f"the Dagster webserver at {url} ({how}) did not answer ({type(error).__name__}: {error}); "
                "set webserver.url in the config file to where it serves"
            ) from None
        if response.status_code != 200:
            raise WebserverError(
                f"the Dagster webserver at {endpoint} answered HTTP {response.status_code}: {response.text[:500]}"
            )
        body = response.json()
        if body.get("errors"):
            raise WebserverError(f"the Dagster webserver at {endpoint} refused the query: {str(body['errors'])[:1000]}")
        return dict(body["data"])
