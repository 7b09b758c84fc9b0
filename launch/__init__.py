"""Command-line entry points: python launch/<name>.py or python -m launch.<name>."""
