"""Coordinator side: the Flower ServerApp, the multi-process deployment launcher."""
