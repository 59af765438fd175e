"""Helpers the tests start in child processes (distributed runs); not collected as tests."""
