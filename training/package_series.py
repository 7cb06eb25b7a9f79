"""Real series shipped inside PyPI packages (filled in below)."""


def load():
    return []
