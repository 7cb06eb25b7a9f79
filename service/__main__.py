"""`python -m service`: serve the forecasting API with uvicorn."""

from __future__ import annotations

import logging

import torch
import uvicorn

from service.app import create_app
from service.settings import parse


def main(argv: list[str] | None = None) -> None:
    settings = parse(argv)
    # The service's own loggers (rimer.*: recovery, snapshots, log warnings) beside uvicorn's.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                access_log=settings.access_log)


if __name__ == "__main__":
    main()
