from tests.turns.conftest import sim

__all__ = ["sim"]
