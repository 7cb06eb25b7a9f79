"""Python client of the Rimer forecasting service: pandas in, pandas out.

    from rimer_client import Client
    with Client("http://127.0.0.1:8000") as rimer:
        fc = rimer.forecast(df, h=24, level=[80, 95])   # df: unique_id, ds, y
"""

from rimer_client.client import AsyncClient, Client
from rimer_client.errors import (
    Conflict,
    ConnectionFailed,
    NotFound,
    PayloadTooLarge,
    RimerError,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from rimer_client.plotting import plot
from rimer_client.ring import Ring

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "Conflict", "ConnectionFailed", "NotFound", "PayloadTooLarge",
           "RimerError", "Ring", "ServerError", "Unauthorized", "Unavailable", "ValidationError", "plot",
           "__version__"]
