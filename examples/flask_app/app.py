"""Flask on celeriac: the pattern Celery's docs teach, unchanged, in sync code.

``POST /tasks`` starts a long task and answers 202 with its id and a ``Location`` to poll;
``GET /tasks/<id>`` answers its state: PROGRESS with ``current``/``total`` while it runs,
then its result or its error. The same names as in async code block here, through one
private event loop per process (no loop per request, no thread per call)::

    celeriac -A examples.flask_app.app worker &
    flask --app examples.flask_app.app:web run
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from celeriac import Celery

celery = Celery("flask_example")


@celery.task(bind=True)
def long_task(self: Any, steps: int, delay: float) -> dict[str, Any]:
    for i in range(steps):
        time.sleep(delay)
        self.update_state(state="PROGRESS", meta={"current": i + 1, "total": steps})
    return {"current": steps, "total": steps, "status": "done"}


@celery.task
def fail(message: str) -> None:
    raise ValueError(message)


web = Flask(__name__)


@web.post("/tasks")
def start() -> ResponseReturnValue:
    data = request.get_json(silent=True) or {}
    if data.get("fail"):
        result = fail.delay(str(data["fail"]))
    else:
        result = long_task.delay(int(data.get("steps", 5)), float(data.get("delay", 0.2)))
    location = url_for("status", task_id=result.id)
    return jsonify({"task_id": result.id}), 202, {"Location": location}


@web.get("/tasks/<task_id>")
def status(task_id: str) -> ResponseReturnValue:
    result = celery.AsyncResult(task_id)
    state = result.state
    body: dict[str, Any] = {"task_id": task_id, "state": state}
    if state == "PROGRESS":
        body["progress"] = result.info
    elif state == "SUCCESS":
        body["result"] = result.result
    elif state in ("FAILURE", "REVOKED"):
        error = result.result
        body["error"] = f"{type(error).__name__}: {error}"
    return jsonify(body)
