"""The parents' page over HTTP (aiohttp, in the daemon's own event loop: no second process).

Every route but the login needs a session: a page answers with a redirect to /login, the API with 401. The session
is an HttpOnly, SameSite=Strict cookie; every change (POST) also carries the session's CSRF token in the
X-CSRF-Token header, or it is refused with 403. The login is rate limited (auth.LoginLimiter); bodies over
MAX_BODY_BYTES are refused with 413 before they are read. The page builds every element with textContent, never
with markup, and the Content-Security-Policy allows only its own script, so a story or request holding HTML is
shown as text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources
from pathlib import Path

from aiohttp import web

from robot.web.auth import LoginLimiter, Sessions, is_csrf_valid
from robot.web.page import ChangeRefused, ParentsPage
from robot.web.password import load_hash, password_path

log = logging.getLogger(__name__)
audit = logging.getLogger("storybot.audit")

COOKIE = "storybot_session"
MAX_BODY_BYTES = 16 * 1024
HEARTBEAT_S = 15.0  # a comment line on the event stream, so that a dropped connection is noticed
SHUTDOWN_S = 2.0
STATIC = {  # the page's own files, by name: nothing else of the file system is ever served
    "app.js": "application/javascript",
    "style.css": "text/css",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PUBLIC = {("GET", "/login"), ("POST", "/login")}


def _asset(name: str) -> bytes:
    return resources.files("robot.web").joinpath("static", name).read_bytes()


class WebServer:
    def __init__(self, page: ParentsPage, state: Path) -> None:
        self.page = page
        self._password_path = password_path(state)
        web_config = page.config.web
        self.sessions = Sessions(web_config.session_hours * 3600)
        self.limiter = LoginLimiter()
        self._checking = asyncio.Lock()
        self._host, self._port = web_config.host, web_config.port
        self._assets = {name: _asset(name) for name in STATIC}
        self._login_html = _asset("login.html").decode()
        self._page_html = _asset("page.html")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard])
        app.add_routes(
            [
                web.get("/login", self._login_page),
                web.post("/login", self._login),
                web.post("/logout", self._logout),
                web.get("/", self._index),
                web.get("/static/{name}", self._static),
                web.get("/api/state", self._state),
                web.get("/api/events", self._events),
                web.get("/api/history", self._history),
                web.post("/api/stop", self._stop),
                web.post("/api/tell", self._tell),
                web.post("/api/volume", self._volume),
                web.post("/api/settings", self._settings),
                web.post("/api/favourites", self._favourite),
                web.post("/api/favourites/remove", self._remove_favourite),
                web.post("/api/favourites/replay", self._replay),
            ]
        )
        return app

    async def run(self) -> None:
        """Serve until cancelled; a port that cannot be opened is logged once and the robot goes on without it."""
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
            try:
                await site.start()
            except OSError as e:
                log.error("the parents' page cannot listen on %s:%d: %s", self._host, self._port, e.strerror or e)
                return
            log.info("the parents' page listens on http://%s:%d/", self._host, self._port)
            if load_hash(self._password_path) is None:
                log.warning("no parent password is set: nobody can log in (storybot web-password)")
            await asyncio.Event().wait()
        finally:
            self.page.close_streams()
            await runner.cleanup()

    # --- the guard: size, session, CSRF, headers ---------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length)
        session = None
        if (request.method, request.path) not in PUBLIC:
            session = self.sessions.find(request.cookies.get(COOKIE))
            if session is None:
                if request.method in ("GET", "HEAD") and not request.path.startswith(("/api/", "/static/")):
                    return _see_other("/login")
                raise web.HTTPUnauthorized(text="log in first\n")
            if request.method not in ("GET", "HEAD") and not is_csrf_valid(
                session, request.headers.get("X-CSRF-Token")
            ):
                audit.info(
                    "audit: refused %s %s from %s: no valid CSRF token", request.method, request.path, request.remote
                )
                raise web.HTTPForbidden(text="missing or wrong CSRF token\n")
        request["session"] = session
        response = await handler(request)
        if not response.prepared:
            response.headers.update(HEADERS)
        return response

    def _who(self, request: web.Request) -> str:
        return f"a parent at {request.remote}"

    # --- login -----------------------------------------------------------------------------------------------

    async def _login_page(self, request: web.Request) -> web.Response:
        return self._login_form("")

    def _login_form(self, message: str, status: int = 200) -> web.Response:
        html = self._login_html.replace("<!--message-->", _escape(message))
        return web.Response(text=html, content_type="text/html", status=status, headers=HEADERS)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        wait_s = self.limiter.retry_after_s()
        if wait_s:
            audit.info("audit: login from %s refused unchecked: too many wrong passwords", request.remote)
            response = self._login_form(f"Too many wrong passwords; try again in {wait_s:.0f} s.", 429)
            response.headers["Retry-After"] = str(int(wait_s) + 1)
            return response
        form = await request.post()
        password = form.get("password")
        stored = load_hash(self._password_path)
        if stored is None:
            return self._login_form("No parent password is set: run storybot web-password on the robot.", 403)
        attempt = self.limiter.failed()  # counted before the check: parallel guesses cannot slip past the limit
        async with self._checking:  # one scrypt at a time: its 16 MiB is what the memory plan counts
            is_right = isinstance(password, str) and await asyncio.to_thread(stored.matches, password)
        if not is_right:
            audit.info("audit: wrong parent password from %s", request.remote)
            return self._login_form("Wrong password.", 401)
        self.limiter.forgive(attempt)
        session = self.sessions.create()
        audit.info("audit: a parent logged in from %s", request.remote)
        response = _see_other("/")
        response.set_cookie(COOKIE, session.token, httponly=True, samesite="Strict", path="/")
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.end(request.cookies.get(COOKIE))
        audit.info("audit: %s logged out", self._who(request))
        response = _see_other("/login")
        response.del_cookie(COOKIE, path="/")
        return response

    # --- the page and its data --------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page_html, content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self._assets[name], content_type=STATIC[name])

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response({**self.page.state_view(), "csrf": request["session"].csrf})

    async def _history(self, request: web.Request) -> web.Response:
        return web.json_response(self.page.history_view())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        queue = self.page.subscribe()
        if queue is None:
            raise web.HTTPServiceUnavailable(text="too many open pages\n")
        response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream"})
        try:
            await response.prepare(request)
            await _send(response, "state", self.page.state_view())
            token = request.cookies.get(COOKIE)
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    item = ()
                if item is None or self.sessions.find(token) is None:  # closing, or logged out meanwhile
                    break
                if item:
                    await _send(response, *item)
                else:
                    await response.write(b": still here\n\n")
        except ConnectionResetError:
            pass  # the page was closed
        finally:
            self.page.unsubscribe(queue)
        return response

    # --- changes ----------------------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text="the body is not JSON\n") from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="the body is not a JSON object\n")
        return data

    async def _act(self, request: web.Request, action) -> web.Response:
        data = await self._body(request)
        try:
            answer = action(self._who(request), data)
        except ChangeRefused as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"ok": True, **(answer or {})})

    async def _stop(self, request: web.Request) -> web.Response:
        return await self._act(request, lambda who, data: self.page.stop(who))

    async def _tell(self, request: web.Request) -> web.Response:
        return await self._act(request, lambda who, data: self.page.tell(who, data.get("text")))

    async def _volume(self, request: web.Request) -> web.Response:
        return await self._act(
            request, lambda who, data: self.page.set_volume(who, data.get("volume"), data.get("cap"))
        )

    async def _settings(self, request: web.Request) -> web.Response:
        return await self._act(request, lambda who, data: self.page.change(who, data))

    async def _favourite(self, request: web.Request) -> web.Response:
        return await self._act(
            request, lambda who, data: {"favourite": self.page.mark_favourite(who, data.get("story"))}
        )

    async def _remove_favourite(self, request: web.Request) -> web.Response:
        return await self._act(request, lambda who, data: self.page.remove_favourite(who, data.get("favourite")))

    async def _replay(self, request: web.Request) -> web.Response:
        return await self._act(request, lambda who, data: {"warning": self.page.replay(who, data.get("favourite"))})


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**HEADERS, "Location": location})


async def _send(response: web.StreamResponse, kind: str, data: dict) -> None:
    payload = json.dumps(data, ensure_ascii=False)  # one line: JSON has no raw newlines
    await response.write(f"event: {kind}\ndata: {payload}\n\n".encode())


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
