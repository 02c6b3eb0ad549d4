"""accelgen: a trained CNN in, a bit-exact FPGA accelerator out, with open tools only."""

__version__ = "0.1.0"
