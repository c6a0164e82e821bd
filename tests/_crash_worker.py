"""A worker process for the fault-injection suite: runs the app's push_alert on one queue message, as the
Functions worker would, so the test can SIGKILL it mid-delivery (a real crash: no handler runs).

The app settings come from the environment (the harness's); the message body from stdin; the app's clock
is fixed at CRASH_WORKER_NOW (ISO), the harness's simulated time, so the claim's lease is on its clock.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from azure.functions.queue import QueueMessage

import function_app
from shared import bootstrap
from shared.adapters.storage import app_storage_connection
from shared.devtools.functions_host import FunctionsHost


def main() -> None:
    now = datetime.fromisoformat(os.environ["CRASH_WORKER_NOW"])
    bootstrap.current().clock = lambda: now
    host = FunctionsHost(function_app.app, app_storage_connection("queue"))
    push_alert = host.functions["push_alert"].user_function
    push_alert(QueueMessage(id="crash-test", body=sys.stdin.buffer.read(), dequeue_count=1))


if __name__ == "__main__":
    main()
