"""The device table: what each FPGA offers the scheduler.

Numbers are the vendors' data-sheet figures for the parts the boards carry. Block RAM is counted
in blocks with their widest read port; DSP capacity in 8-bit products per DSP block (the UP5K's
SB_MAC16 holds two 8x8 multipliers when instantiated in its dual mode; Gowin's MULT18X18 splits
into two MULT9X9), so wider products cost a whole block.
"""

from __future__ import annotations

from dataclasses import dataclass

from accelgen.errors import UsageError


@dataclass(frozen=True)
class Device:
    name: str
    family: str  # "ice40", "ecp5", "gowin"
    part: str  # the nextpnr device string
    luts: int  # LUT4s (iCE40: logic cells, each with a LUT4 and a flip-flop)
    ffs: int
    bram_blocks: int
    bram_bits: int  # per block
    bram_width: int  # widest data port (bits)
    spram_blocks: int
    spram_bits: int
    spram_width: int
    dsp_blocks: int
    dsp_products_8bit: int  # 8x8 products per DSP block
    dsp_max_bits: int  # widest operand a DSP block multiplies
    planned_clock_mhz: float
    """What the scheduler plans with and the build must meet. Set from the default model's
    builds: the UP5K full of the default model reached 27-33 MHz (its host link's engine on the
    critical path), the LFE5U-85F 49 MHz at a 60 MHz target, the GW1NR-9 66 MHz."""

    def dsp_products(self, a_bits: int, b_bits: int) -> int:
        """Products of this width one DSP block computes per cycle (0: not on a DSP)."""
        if self.dsp_blocks == 0 or max(a_bits, b_bits) > self.dsp_max_bits:
            return 0
        narrow = 9 if self.family in ("gowin", "ecp5") else 8
        return self.dsp_products_8bit if max(a_bits, b_bits) <= narrow else 1


DEVICES: dict[str, Device] = {
    "iCE40UP5K": Device("iCE40UP5K", "ice40", "up5k", luts=5280, ffs=5280, bram_blocks=30,
                        bram_bits=4096, bram_width=16, spram_blocks=4, spram_bits=262144,
                        spram_width=16, dsp_blocks=8, dsp_products_8bit=2, dsp_max_bits=16,
                        planned_clock_mhz=25.0),
    "iCE40HX8K": Device("iCE40HX8K", "ice40", "hx8k", luts=7680, ffs=7680, bram_blocks=32,
                        bram_bits=4096, bram_width=16, spram_blocks=0, spram_bits=0,
                        spram_width=0, dsp_blocks=0, dsp_products_8bit=0, dsp_max_bits=0,
                        planned_clock_mhz=40.0),
    "LFE5U-12F": Device("LFE5U-12F", "ecp5", "12k", luts=12288, ffs=12288, bram_blocks=32,
                        bram_bits=18432, bram_width=36, spram_blocks=0, spram_bits=0,
                        spram_width=0, dsp_blocks=28, dsp_products_8bit=1, dsp_max_bits=18,
                        planned_clock_mhz=45.0),
    "LFE5U-25F": Device("LFE5U-25F", "ecp5", "25k", luts=24288, ffs=24288, bram_blocks=56,
                        bram_bits=18432, bram_width=36, spram_blocks=0, spram_bits=0,
                        spram_width=0, dsp_blocks=28, dsp_products_8bit=1, dsp_max_bits=18,
                        planned_clock_mhz=45.0),
    "LFE5U-45F": Device("LFE5U-45F", "ecp5", "45k", luts=43848, ffs=43848, bram_blocks=108,
                        bram_bits=18432, bram_width=36, spram_blocks=0, spram_bits=0,
                        spram_width=0, dsp_blocks=72, dsp_products_8bit=1, dsp_max_bits=18,
                        planned_clock_mhz=45.0),
    "LFE5U-85F": Device("LFE5U-85F", "ecp5", "85k", luts=83640, ffs=83640, bram_blocks=208,
                        bram_bits=18432, bram_width=36, spram_blocks=0, spram_bits=0,
                        spram_width=0, dsp_blocks=156, dsp_products_8bit=1, dsp_max_bits=18,
                        planned_clock_mhz=45.0),
    "GW1NR-9": Device("GW1NR-9", "gowin", "GW1NR-LV9QN88PC6/I5", luts=8640, ffs=6480,
                      bram_blocks=26, bram_bits=18432, bram_width=36, spram_blocks=0,
                      spram_bits=0, spram_width=0, dsp_blocks=20, dsp_products_8bit=2,
                      dsp_max_bits=18, planned_clock_mhz=50.0),
}

def device(name: str) -> Device:
    """The device of a board (a name or alias from `accelgen.boards`) or a device name."""
    from accelgen import boards

    if boards.is_board(name):
        return boards.board(name).device
    if name not in DEVICES:
        raise UsageError(
            f"unknown board or device {name!r}; boards: "
            f"{', '.join([*boards.ALIASES, *boards.BOARDS])}; devices: {', '.join(DEVICES)}"
        )
    return DEVICES[name]
