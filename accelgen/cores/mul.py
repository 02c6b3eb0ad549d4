"""Registered multipliers, mapped to the device's DSP blocks or to LUTs as the plan says.

`ProductArray` computes ``p[k] = a[k] * b[k]`` for `n` operand pairs, registered (one cycle).
The first `dsp` products go to DSP blocks, the rest are LUT multipliers:

* **iCE40 UP5K**: `SB_MAC16` instantiated directly (Yosys never infers its dual 8x8 mode) —
  two 8x8 products per block when both operands fit 8 bits (``MODE_8x8``, the 8x8 product
  registers, output select 2), one 16x16 product otherwise (output select 3 behind the 16x16
  pipeline register). Signedness is per block, as the hardware shares it between the halves.
* **ECP5 / Gowin**: ``*`` left for Yosys to map to ``MULT18X18D`` / ``MULT9X9``/``MULT18X18``.
* **LUT multipliers**: explicit shift-and-add partial products, which Yosys does not turn back
  into DSP cells, so the DSP count is the plan's.

A product may also be *shared*: computed outside the array, by a `SharedMultiplier` — one iCE40
block whose two 8x8 halves serve two stages that each have one product left over (a stage
with an odd number of products would otherwise leave half a block idle).

In simulation (no platform) every product is the behavioural ``a * b``; `dsp_model` mirrors the
iCE40 cell for tests, and `tests/test_mul.py` proves the instantiated cell equal to ``a * b``
with Yosys' own simulation model (`ice40/cells_sim.v`).
"""

from __future__ import annotations

from amaranth import (
    Cat,
    ClockSignal,
    Const,
    Elaboratable,
    Instance,
    Module,
    Shape,
    Signal,
    Value,
    signed,
)
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accelgen.errors import ShapeError


def lut_multiply(a: Value, b: Value) -> Value:
    """``a * b`` as partial products (two's complement aware), for LUT fabric."""
    b_shape = b.shape()
    nb = b_shape.width
    total = Const(0, signed(1))
    for i in range(nb):
        mask = Cat(*([b[i]] * a.shape().width))
        term = (a.as_unsigned() & mask)
        term = term.as_signed() if a.shape().signed else term
        if b_shape.signed and i == nb - 1:
            total = total - (term << i)
        else:
            total = total + (term << i)
    return total


def _sb_mac16(m: Module, name: str, clk: Value, a: Value, b: Value, out: Signal, *,
              mode_8x8: int, a_signed: bool, b_signed: bool, mult_8x8_reg: int,
              pipeline_16x16_reg2: int, output_select: int) -> None:
    """An SB_MAC16 used as a plain multiplier: no input registers, no accumulator or adder,
    every control input tied off; the mode, the product register and the output select vary."""
    m.submodules[name] = Instance(
        "SB_MAC16",
        p_MODE_8x8=mode_8x8, p_A_SIGNED=int(a_signed), p_B_SIGNED=int(b_signed), p_A_REG=0,
        p_B_REG=0, p_C_REG=0, p_D_REG=0, p_TOP_8x8_MULT_REG=mult_8x8_reg,
        p_BOT_8x8_MULT_REG=mult_8x8_reg, p_PIPELINE_16x16_MULT_REG1=0,
        p_PIPELINE_16x16_MULT_REG2=pipeline_16x16_reg2, p_TOPOUTPUT_SELECT=output_select,
        p_BOTOUTPUT_SELECT=output_select, p_TOPADDSUB_LOWERINPUT=0, p_TOPADDSUB_UPPERINPUT=0,
        p_TOPADDSUB_CARRYSELECT=0, p_BOTADDSUB_LOWERINPUT=0, p_BOTADDSUB_UPPERINPUT=0,
        p_BOTADDSUB_CARRYSELECT=0, p_NEG_TRIGGER=0,
        i_CLK=clk, i_CE=1, i_A=a, i_B=b, i_C=0, i_D=0, i_AHOLD=0, i_BHOLD=0, i_CHOLD=0,
        i_DHOLD=0, i_IRSTTOP=0, i_IRSTBOT=0, i_ORSTTOP=0, i_ORSTBOT=0, i_OLOADTOP=0,
        i_OLOADBOT=0, i_ADDSUBTOP=0, i_ADDSUBBOT=0, i_OHOLDTOP=0, i_OHOLDBOT=0, i_CI=0,
        i_ACCUMCI=0, i_SIGNEXTIN=0, o_O=out,
    )


def _ice40_pair(m: Module, a0: Value, b0: Value, a1: Value, b1: Value, a_signed: bool,
                b_signed: bool, clk: Value, name: str) -> tuple[Value, Value]:
    """Two 8x8 products in one SB_MAC16 (dual mode), registered in the block."""
    out = Signal(32, name=f"{name}_o")
    a = Cat(_ext(a0, 8, a_signed), _ext(a1, 8, a_signed))
    b = Cat(_ext(b0, 8, b_signed), _ext(b1, 8, b_signed))
    _sb_mac16(m, name, clk, a, b, out, mode_8x8=1, a_signed=a_signed, b_signed=b_signed,
              mult_8x8_reg=1, pipeline_16x16_reg2=0, output_select=2)
    return out[:16].as_signed(), out[16:].as_signed()


def _ice40_wide(m: Module, a: Value, b: Value, a_signed: bool, b_signed: bool, clk: Value,
                name: str) -> Value:
    """One 16x16 product in one SB_MAC16, registered by its 16x16 pipeline register."""
    out = Signal(32, name=f"{name}_o")
    _sb_mac16(m, name, clk, _ext(a, 16, a_signed), _ext(b, 16, b_signed), out, mode_8x8=0,
              a_signed=a_signed, b_signed=b_signed, mult_8x8_reg=0, pipeline_16x16_reg2=1,
              output_select=3)
    return out.as_signed()


def _ext(v: Value, width: int, signed_: bool) -> Value:
    """`v` sign- or zero-extended to `width` bits (as raw bits)."""
    if v.shape().width > width:
        raise ShapeError(f"operand of {v.shape().width} bits for a {width}-bit multiplier")
    pad = width - v.shape().width
    top = v[-1] if signed_ and v.shape().signed else Const(0, 1)
    return Cat(v, *([top] * pad)) if pad else v


def shared_signature(a_shape: Shape, b_shape: Shape, p_shape: Shape) -> wiring.Signature:
    """A stage's side of a shared product: operands out, the registered product in."""
    return wiring.Signature({"a": Out(a_shape), "b": Out(b_shape), "p": In(p_shape)})


class SharedMultiplier(wiring.Component):
    """Registered ``p = a * b`` for one or two stages (ports ``m0``, ``m1``): one iCE40
    ``SB_MAC16`` in dual 8x8 mode on an iCE40 platform, behavioural elsewhere."""

    def __init__(self, shapes: list[tuple[Shape, Shape, Shape]], family: str | None = None
                 ) -> None:
        if not 1 <= len(shapes) <= 2:
            raise ShapeError(f"a shared DSP block serves one or two products, not {len(shapes)}")
        if len({(Shape.cast(a).signed, Shape.cast(b).signed) for a, b, _ in shapes}) > 1:
            raise ShapeError("the halves of a shared DSP block need the same operand signedness")
        self.family = family
        super().__init__({f"m{k}": In(shared_signature(*shape))
                          for k, shape in enumerate(shapes)})

    @property
    def ports(self) -> list:
        return [getattr(self, f"m{k}") for k in range(len(self.signature.members))]

    def elaborate(self, platform) -> Module:
        m = Module()
        ports = self.ports
        if platform is None or self.family != "ice40":
            for port in ports:
                m.d.sync += port.p.eq(port.a * port.b)
            return m
        a_signed = ports[0].a.shape().signed
        b_signed = ports[0].b.shape().signed
        other = ports[-1]
        p0, p1 = _ice40_pair(m, ports[0].a, ports[0].b, other.a, other.b, a_signed, b_signed,
                             ClockSignal("sync"), "mac")
        m.d.comb += ports[0].p.eq(p0)
        if len(ports) == 2:
            m.d.comb += ports[1].p.eq(p1)
        return m


class ProductArray(Elaboratable):
    """``p[k] = a[k] * b[k]`` registered, the first `dsp` of them on DSP blocks; with `shared`,
    product `dsp` comes from a `SharedMultiplier` through ``ext_a``, ``ext_b`` and ``ext_p``."""

    def __init__(self, a: list[Value], b: list[Value], product_shape: Shape, *, dsp: int = 0,
                 family: str | None = None, shared: bool = False) -> None:
        if len(a) != len(b):
            raise ShapeError(f"{len(a)} a operands for {len(b)} b operands")
        self.a, self.b = a, b
        self.dsp = min(dsp, len(a))
        if shared and self.dsp >= len(a):
            raise ShapeError(f"no product left for a shared DSP block ({len(a)} on DSPs)")
        self.family = family
        self.shared = shared
        self.p = [Signal(product_shape, name=f"p{k}") for k in range(len(a))]
        if shared:
            self.ext_a = Signal(a[self.dsp].shape(), name="ext_a")
            self.ext_b = Signal(b[self.dsp].shape(), name="ext_b")
            self.ext_p = Signal(product_shape, name="ext_p")

    def elaborate(self, platform) -> Module:
        m = Module()
        on_ice40 = platform is not None and self.family == "ice40"
        for k, (a, b) in enumerate(zip(self.a, self.b, strict=True)):
            if self.shared and k == self.dsp:
                m.d.comb += [self.ext_a.eq(a), self.ext_b.eq(b), self.p[k].eq(self.ext_p)]
                continue
            if k < self.dsp and on_ice40:
                continue  # placed below, in pairs
            if k < self.dsp or platform is None:
                m.d.sync += self.p[k].eq(a * b)
            else:
                m.d.sync += self.p[k].eq(lut_multiply(a, b))
        if on_ice40 and self.dsp:
            clk = ClockSignal("sync")
            narrow = all(x.shape().width <= 8 for x in self.a[: self.dsp] + self.b[: self.dsp])
            a_signed = any(x.shape().signed for x in self.a[: self.dsp])
            b_signed = any(x.shape().signed for x in self.b[: self.dsp])
            if narrow:
                for k in range(0, self.dsp, 2):
                    k1 = k + 1 if k + 1 < self.dsp else k  # an odd count: the spare half idles
                    p0, p1 = _ice40_pair(m, self.a[k], self.b[k], self.a[k1], self.b[k1],
                                         a_signed, b_signed, clk, f"mac{k // 2}")
                    m.d.comb += self.p[k].eq(p0)
                    if k1 != k:
                        m.d.comb += self.p[k1].eq(p1)
            else:
                for k in range(self.dsp):
                    m.d.comb += self.p[k].eq(_ice40_wide(m, self.a[k], self.b[k], a_signed,
                                                         b_signed, clk, f"mac{k}"))
        return m

