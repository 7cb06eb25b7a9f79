"""The HTTP routes, by what they serve: stateless forecasts, streaming series, operations."""
