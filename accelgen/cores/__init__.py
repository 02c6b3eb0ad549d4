"""Hardware stages of the streaming pipeline (Amaranth components with stream ports)."""
