"""The rating web app's routes (Starlette): pages, the rater API, images by id, the admin API.

Under the path of `server.base_url` (empty on a laptop; `/coz-study` for `https://lab.example.org/coz-study`,
the reverse proxy passing the path on unchanged):
- `GET /r/<token>`: the rating page (`templates/rate.html` + `static/rate.js`); every other URL it uses is
  relative to it, so it works under any prefix;
- `GET /api/r/<token>/state`: the rater's tasks (images by id and text only: no condition, item or check),
  answers so far, texts and anchors;
- `POST /api/r/<token>/answer`: `{"task", "score" | "choice", "seconds", "submission"}` -> stored at once
  (`Store.answer`), answered the rater's progress and the next unanswered task;
- `GET /media/<token>/<id>.png`: an image of one of that rater's tasks or the anchors, nothing else;
- `GET /admin/<admin token>`, `GET /api/admin/<admin token>/progress`: progress per rater, live means;
- `GET /static/<name>`, `GET /health`.
Bad input gets a 4xx with a JSON `{"error": ...}` saying what was wrong, and changes nothing: unknown
tokens and tasks 404, a body over `server.max_body_bytes` 413, not JSON 415/400, a score outside 1..5 or a
choice not offered 422. Every response carries no-referrer (tokens are in URLs), nosniff, a strict CSP
and no-store on the API.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev
from urllib.parse import urlparse

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route

from coz_train.printable import printable
from coz_train.study.media import MEDIA_ID
from coz_train.study.ratings import CHOICES, SCALE
from coz_train.study.store import Store
from coz_train.study.tasks import client_view

HERE = Path(__file__).resolve().parent
TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
SUBMISSION = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
STATIC = {"rate.js": "text/javascript", "admin.js": "text/javascript", "style.css": "text/css",
          "favicon.svg": "image/svg+xml"}
LABELS = {5: "Excellent", 4: "Good", 3: "Fair", 2: "Poor", 1: "Bad"}  # ITU-T P.910 ACR
MAX_SECONDS = 3600.0  # time on a task is capped: a tab left open over lunch is not an hour of rating
ANSWER_KEYS = {"task", "score", "choice", "seconds", "submission"}
HEADERS = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                      "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}


def base_path(base_url: str | None) -> str:
    """The path part of server.base_url, without a trailing slash ('' for none)."""
    if not base_url:
        return ""
    path = urlparse(base_url).path if "://" in base_url else base_url
    return "/" + path.strip("/") if path.strip("/") else ""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})


class StudyApp:
    def __init__(self, folder: Path, manifest: dict, store: Store, max_body_bytes: int):
        self.folder, self.manifest, self.store = folder, manifest, store
        self.max_body_bytes = max_body_bytes
        self._media: dict[str, set[str]] = {}
        self.anchor_media = {m for test in manifest["anchors"].values() for a in test for m in a["images"]}
        study = manifest["config"]["study"]
        self.unsure = bool(study.get("unsure", True))
        self.texts = study["texts"]
        self.anchors = {test: [shown(a) for a in anchors] for test, anchors in manifest["anchors"].items()}

    # --- helpers
    def rater(self, token: str) -> str:
        rater = self.store.rater_for_token(token) if TOKEN.match(token) else None
        if rater is None:
            raise HTTPException(404, "This invitation link is not valid: check it was copied whole.")
        return rater

    def admin(self, token: str) -> None:
        if not (TOKEN.match(token) and self.store.is_admin(token)):
            raise HTTPException(404, "Not found.")

    def rater_media(self, rater: str) -> set[str]:
        if rater not in self._media:  # a rater's tasks never change once made
            ids = set(self.anchor_media)
            for task in self.store.tasks(rater):
                ids.update(m for p in task["panels"] for m in p["images"])
                if task["reference"]:
                    ids.add(task["reference"])
            self._media[rater] = ids
        return self._media[rater]

    @staticmethod
    def next_index(tasks: list[dict], answers: dict) -> int | None:
        return next((n for n, t in enumerate(tasks) if t["task"] not in answers), None)

    # --- pages
    async def page(self, name: str) -> HTMLResponse:
        """templates/page.html around templates/<name>.html, with static/<name>.js."""
        body = (HERE / "templates" / f"{name}.html").read_text()
        html = (HERE / "templates" / "page.html").read_text().replace("{{body}}", body).replace("{{page}}", name)
        html = html.replace("{{title}}", _escape(self.texts["title"]))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def rate_page(self, request: Request) -> Response:
        await run_in_threadpool(self.rater, request.path_params["token"])
        return await self.page("rate")

    async def admin_page(self, request: Request) -> Response:
        await run_in_threadpool(self.admin, request.path_params["token"])
        return await self.page("admin")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise HTTPException(404, "Not found.")
        return FileResponse(HERE / "static" / name, media_type=STATIC[name])

    # --- rater API
    def _state(self, token: str) -> dict:
        rater = self.rater(token)
        tasks = self.store.tasks(rater)
        answers = self.store.answers(rater)
        return {"rater": rater, "mode": self.manifest["mode"], "unsure": self.unsure, "texts": self.texts,
                "labels": {str(k): v for k, v in LABELS.items()}, "anchors": self.anchors,
                "tasks": [shown(client_view(t)) for t in tasks], "answers": answers,
                "next": self.next_index(tasks, answers)}

    async def state(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self._state, request.path_params["token"]),
                            headers={"Cache-Control": "no-store"})

    async def _body(self, request: Request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "Send the answer as application/json.")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            raise HTTPException(413, f"The request body is over {self.max_body_bytes} bytes.")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise HTTPException(413, f"The request body is over {self.max_body_bytes} bytes.")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise HTTPException(400, f"The body is not JSON: {err}.") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "The body must be a JSON object {task, score | choice, seconds, submission}.")
        unknown = sorted(set(data) - ANSWER_KEYS)
        if unknown:
            raise HTTPException(400, f"Unknown fields {unknown}; an answer has {sorted(ANSWER_KEYS)}.")
        return data

    def _store_answer(self, token: str, data: dict) -> dict:
        rater = self.rater(token)
        task_id = data.get("task")
        task = self.store.task(rater, task_id) if isinstance(task_id, str) and len(task_id) < 32 else None
        if task is None:
            raise HTTPException(404, f"No task {str(task_id)[:32]!r} for this rater.")
        score, choice = data.get("score"), data.get("choice")
        if task["kind"] == "mos":
            if type(score) is not int or not SCALE[0] <= score <= SCALE[1] or choice is not None:
                raise HTTPException(422, f"Task {task_id} takes a score, an integer {SCALE[0]}..{SCALE[1]} "
                                         f"(and no choice); got score={score!r}, choice={choice!r}.")
        else:
            offered = CHOICES if self.unsure else tuple(c for c in CHOICES if c != "unsure")
            if choice not in offered or score is not None:
                raise HTTPException(422, f"Task {task_id} takes a choice, one of {list(offered)} (and no score); "
                                         f"got choice={choice!r}, score={score!r}.")
        seconds = data.get("seconds", 0.0)
        if type(seconds) not in (int, float) or not math.isfinite(seconds) or seconds < 0:
            raise HTTPException(422, f"seconds must be a number >= 0, got {seconds!r}.")
        submission = data.get("submission")
        if not isinstance(submission, str) or not SUBMISSION.match(submission):
            raise HTTPException(422, "submission must be a client-made id of 8-64 letters, digits, - or _.")
        stored = self.store.answer(rater, task_id, score, choice, min(float(seconds), MAX_SECONDS), submission)
        tasks = self.store.tasks(rater)
        return {"stored": True, "duplicate": stored.duplicate, "answered": stored.answered, "total": stored.total,
                "next": self.next_index(tasks, self.store.answers(rater))}

    async def answer(self, request: Request) -> Response:
        token = request.path_params["token"]
        await run_in_threadpool(self.rater, token)  # an unknown token is a 404 before the body is read
        data = await self._body(request)
        return JSONResponse(await run_in_threadpool(self._store_answer, token, data),
                            headers={"Cache-Control": "no-store"})

    async def media(self, request: Request) -> Response:
        token, media_id = request.path_params["token"], request.path_params["media"]
        rater = await run_in_threadpool(self.rater, token)
        if not MEDIA_ID.match(media_id) or media_id not in await run_in_threadpool(self.rater_media, rater):
            raise HTTPException(404, "No such image for this rater.")
        return FileResponse(self.folder / "media" / f"{media_id}.png", media_type="image/png",
                            headers={"Cache-Control": "private, max-age=3600"})

    # --- admin API
    def _progress(self, token: str) -> dict:
        self.admin(token)
        return {"name": self.manifest["name"], "mode": self.manifest["mode"], "raters": self.store.progress(),
                "results": live_results(self.store.ratings())}

    async def progress(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self._progress, request.path_params["token"]),
                            headers={"Cache-Control": "no-store"})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})


def shown(entry: dict) -> dict:
    """A task or anchor as the page shows it: prompts with their control characters escaped (`printable`)."""
    if "panels" in entry:
        return {**entry, "panels": [{**p, "text": printable(p["text"])} for p in entry["panels"]]}
    return {**entry, "text": printable(entry["text"])}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def live_results(ratings: list) -> list[dict]:
    """The admin page's table: per test and condition, the plain mean of ordinary answers (no checks,
    nobody dropped) or, for pairs, wins / losses / unsure. The study's analysis is `analyze`."""
    scores: dict[tuple[str, str], list[int]] = defaultdict(list)
    pairs: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in ratings:
        if r.check:
            continue
        if r.kind == "mos":
            scores[r.test, r.condition].append(r.score)
            continue
        for side, cond in (("left", r.condition_left), ("right", r.condition_right)):
            pairs[r.test, cond][0 if r.choice == side else 2 if r.choice == "unsure" else 1] += 1
    rows = [{"test": t, "condition": c, "n": len(v), "mean": round(mean(v), 3),
             "sd": round(stdev(v), 3) if len(v) > 1 else None} for (t, c), v in sorted(scores.items())]
    rows += [{"test": t, "condition": c, "wins": w, "losses": lo, "unsure": u}
             for (t, c), (w, lo, u) in sorted(pairs.items())]
    return rows


def make_app(folder: Path, manifest: dict, store: Store, base_url: str | None, max_body_bytes: int) -> Starlette:
    study = StudyApp(folder, manifest, store, max_body_bytes)
    routes = [
        Route("/r/{token}", study.rate_page), Route("/api/r/{token}/state", study.state),
        Route("/api/r/{token}/answer", study.answer, methods=["POST"]),
        Route("/media/{token}/{media}.png", study.media),
        Route("/admin/{token}", study.admin_page), Route("/api/admin/{token}/progress", study.progress),
        Route("/static/{name}", study.static), Route("/health", study.health),
    ]
    prefix = base_path(base_url)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, exc.detail)

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(500, "The server could not store this; try again (nothing was stored twice).")

    app = Starlette(routes=[Mount(prefix, routes=routes)] if prefix else routes,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    return _with_headers(app)


def _with_headers(app):
    """Security headers on every response (pure ASGI, so streamed files get them too)."""
    extra = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await app(scope, receive, send_with_headers)

    wrapped.app = app
    return wrapped
