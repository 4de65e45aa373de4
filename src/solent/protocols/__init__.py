"""Thin protocol adapters: each translates its protocol into service calls and back."""
