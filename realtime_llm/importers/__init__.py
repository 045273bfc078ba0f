"""Bringing history in from elsewhere: the Go original (import-original) and ChatGPT exports."""
