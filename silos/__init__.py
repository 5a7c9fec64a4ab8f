"""Silo side: the Flower ClientApp serving one private domain."""
