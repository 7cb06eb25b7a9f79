"""`python -m service`: serve the forecasting API with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.settings import parse


def main(argv: list[str] | None = None) -> None:
    settings = parse(argv)
    # The service's own loggers (rimer.*: recovery, snapshots, log warnings) beside uvicorn's.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
