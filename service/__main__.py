"""`python -m service`: serve the forecasting API with uvicorn."""

from __future__ import annotations

import uvicorn

from service.app import create_app
from service.settings import parse


def main(argv: list[str] | None = None) -> None:
    settings = parse(argv)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
