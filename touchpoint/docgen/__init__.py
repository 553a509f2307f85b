"""Generators of the documents the code defines: configuration reference, schemas, AsyncAPI."""
