"""Helpers the tests share (none of them is a test file): oracles, toy backbones, random pass programs,
the server harness. Test files import them as ``from support.<module> import ...``."""
