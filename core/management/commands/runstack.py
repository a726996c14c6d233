"""``manage.py runstack``: web + worker + beat from the Procfile, supervised together.

Output of all three is multiplexed with a name prefix; Ctrl-C (or SIGTERM) stops all three, and
when one exits the others are stopped too, so a broken stack never half-runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from honcho.environ import parse_procfile
from honcho.manager import Manager
from honcho.printer import Printer


class Command(BaseCommand):
    help = "Run the web, worker and beat processes of the Procfile until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument(
            "--only",
            nargs="*",
            default=None,
            help="Process names of the Procfile to run (default: all).",
        )

    def handle(self, *args, only=None, **options):
        procfile = parse_procfile((Path(settings.BASE_DIR) / "Procfile").read_text())
        env = {
            **os.environ,
            "HOST": settings.HOST,
            "PORT": str(settings.PORT),
            "PYTHONUNBUFFERED": "1",
            # The Procfile says `python`: make it this interpreter (the virtualenv's).
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        manager = Manager(Printer(sys.stdout))
        for name, process in procfile.processes.items():
            if only and name not in only:
                continue
            manager.add_process(name, process, env=env, cwd=str(settings.BASE_DIR))
        url = f"http://{settings.HOST}:{settings.PORT}/"
        self.stdout.write(
            f"Platform starting on {url} (API docs: {url}api/docs/). Ctrl-C stops web, worker and beat.\n"
        )
        self.stdout.flush()
        manager.loop()
        sys.exit(manager.returncode or 0)
