"""Operators: each runs one call of the engine or the stack runtime and passes its result by XCom."""
