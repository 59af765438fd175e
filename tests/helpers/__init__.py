"""Helpers of the tests: code they start in child processes (distributed runs) and shared training loops; not collected as tests."""
