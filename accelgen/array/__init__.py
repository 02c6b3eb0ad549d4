"""The layer-sequential PE array (seed 001): instruction set, compiler, machine model."""
