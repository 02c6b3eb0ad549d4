"""Memories of the hardware templates: the sliding-window line buffer and weight ROMs."""
