"""The forecasting HTTP service: stateless forecasts and streaming series with recurrent state."""
