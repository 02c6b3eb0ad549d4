"""The host link end to end in simulation: the host driver talks over a simulated UART to a
small accelerator (a 4x4x2 convolution with run-time-loaded weights, then a dense layer to 10
logits), and every answer is checked against the golden model with ==. Then the faults: damaged,
truncated, repeated and malformed frames, garbage on the line, a silent device, a stalled
accelerator."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator
from onnx import helper

from accelgen import golden
from accelgen.accelerator import Accelerator
from accelgen.compress import quantize
from accelgen.devices import device
from accelgen.frontend import load_model
from accelgen.host import Device, SimTransport, run_images
from accelgen.link import HostLink, LinkedAccelerator
from accelgen.link.protocol import (
    PING_PAYLOAD,
    Cmd,
    DeviceError,
    DeviceInfo,
    ErrorCode,
    FrameDecoder,
    LinkError,
    decode_frame,
    decode_infer,
    encode_codes,
    encode_error,
    encode_frame,
)
from accelgen.scheduler import plan
from accelgen.sim import simulate
from tests.onnx_helpers import FLOAT, make_model

DIVISOR = 4
CLOCK_HZ = 1_000_000  # simulated: 1 s of host timeout is a million cycles
TIMEOUT_CYCLES = 2_000  # the device's inter-byte timeout (50 byte times)
HOST_TIMEOUT_S = 0.02  # the host's wait for a response: 20 000 cycles


@pytest.fixture(scope="module")
def net() -> dict:
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Flatten", ["r1"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1),
    ]
    inits = {"w1": rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.5,
             "b1": rng.standard_normal(4).astype(np.float32) * 0.1,
             "fc": rng.standard_normal((10, 64)).astype(np.float32),
             "fcb": rng.standard_normal(10).astype(np.float32) * 0.1}
    model = make_model(nodes, [("x", ["N", 2, 4, 4], FLOAT)], [("logits", None, FLOAT)], inits)
    qg, _ = quantize(load_model(model), rng.uniform(-1, 1, (64, 2, 4, 4)).astype(np.float32))
    base = plan(qg, device("ice40"))
    # the convolution's weights in run-time-loaded RAM (what the UP5K does with SPRAM)
    loadable = replace(base, stages=tuple(replace(s, weight_memory="spram") if s.kind == "conv"
                                          else s for s in base.stages))
    x = rng.uniform(-1, 1, (6, 2, 4, 4)).astype(np.float32)
    x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
    return {"qg": qg, "plan": base, "acc": Accelerator(loadable), "x_ir": x_ir,
            "want": golden.logits(qg, x)}


def open_device(acc, *, transport=SimTransport, timeout_s: float = HOST_TIMEOUT_S,
                retries: int = 2, **link) -> tuple[Device, SimTransport]:
    linked = LinkedAccelerator(acc, DIVISOR, CLOCK_HZ, design_hash=0xC0FFEE,
                               timeout_cycles=TIMEOUT_CYCLES, **link)
    tr = transport(linked)
    return Device(tr, timeout_s=timeout_s, retries=retries), tr


@pytest.fixture
def loaded(net: dict) -> tuple[Device, SimTransport]:
    dev, tr = open_device(net["acc"])
    dev.load_weights(net["acc"].weight_image(), chunk=40)
    return dev, tr


def check_image(dev: Device, net: dict, k: int) -> None:
    r = dev.infer(net["x_ir"][k])
    assert np.array_equal(r.logits, net["want"][k]), k
    assert r.cls == int(np.argmax(net["want"][k]))


# -- the protocol in Python ---------------------------------------------------------------------


def test_frames_round_trip_and_the_decoder_skips_garbage_and_damage() -> None:
    a = encode_frame(7, Cmd.INFER | 0x80, bytes(range(40)))
    b = encode_error(8, ErrorCode.BAD_LENGTH, Cmd.PING)
    damaged = bytearray(encode_frame(9, Cmd.PING, b"x"))
    damaged[5] ^= 1
    dec = FrameDecoder()
    stream = b"\x00\x13" + a + bytes(damaged) + b"\x42" + b
    frames = [f for k in range(0, len(stream), 5) for f in dec.feed(stream[k : k + 5])]
    assert [(f.seq, f.cmd) for f in frames] == [(7, 0xA0), (8, 0xFF)]
    assert frames[0].payload == bytes(range(40))
    assert frames[1].error == ErrorCode.BAD_LENGTH and frames[1].error_cmd == Cmd.PING
    assert dec.bad_crc == 1 and dec.skipped >= 3
    assert decode_frame(a) == frames[0]
    with pytest.raises(LinkError, match="not one valid frame"):
        decode_frame(bytes(damaged))
    info = DeviceInfo(1, 4, 4, 2, 2, 8, False, 1, 10, 1, True, 4, 72, 12_000_000, 0xDEADBEEF, )
    assert DeviceInfo.unpack(info.pack()) == info and len(info.pack()) == 28
    with pytest.raises(LinkError, match="outside"):
        encode_codes(np.full((4, 4, 2), 256), info)
    with pytest.raises(LinkError, match=r"\(4, 4, 2\)"):
        encode_codes(np.zeros((4, 4, 3), dtype=np.int64), info)


# -- end to end ---------------------------------------------------------------------------------


def test_ping_info_and_counters(net: dict) -> None:
    dev, _ = open_device(net["acc"])
    assert dev.ping() == 1
    info = dev.info()
    acc = net["acc"]
    assert info.shape == (4, 4, 2) and info.lanes == acc.in_fmt.lanes
    assert (info.bits, info.signed, info.bytes_per_code) == (acc.in_fmt.bits,
                                                             acc.in_fmt.signed, 1)
    assert (info.logits, info.logit_signed, info.cls_bits) == (10, acc.out_fmt.signed,
                                                               acc.cls_bits)
    assert info.load_bytes == acc.load_bytes > 0
    assert (info.clock_hz, info.design_hash) == (CLOCK_HZ, 0xC0FFEE)
    c = dev.counters()
    assert (c.images, c.crc_errors, c.timeouts, c.rx_errors) == (0, 0, 0, 0)
    assert c.frames_ok == 3  # PING, INFO and this COUNTERS
    assert dev.layer_counters().shape == (0, 3)  # the pipeline has no per-layer counters


def test_load_then_infer_bit_exact_with_latency(net: dict,
                                                loaded: tuple[Device, SimTransport]) -> None:
    dev, _ = loaded
    acc = net["acc"]
    got = run_images(dev, acc, net["x_ir"][:3])
    assert np.array_equal(got.logits, net["want"][:3])
    assert np.array_equal(got.classes, net["want"][:3].argmax(1))
    # the latency counter: from the first input beat to the last logit; the codes arrive at
    # the UART's pace, so it is pysim's full-speed latency plus at most the image's bytes
    alone = simulate(acc, net["x_ir"][:1])
    byte_cycles = 10 * DIVISOR
    image_bytes = dev.info().image_bytes
    assert len(set(got.cycles.tolist())) == 1  # the same every time
    assert alone.counter_latency <= got.cycles[0] <= (alone.counter_latency
                                                      + image_bytes * byte_cycles)
    c = dev.counters()
    assert (c.images, c.last_latency) == (3, got.cycles[-1])
    assert (c.crc_errors, c.timeouts, c.rx_errors) == (0, 0, 0)


def test_infer_before_loading_is_refused(net: dict) -> None:
    dev, _ = open_device(net["acc"])
    with pytest.raises(DeviceError, match="NOT_LOADED") as err:
        dev.infer(net["x_ir"][0])
    assert err.value.code == ErrorCode.NOT_LOADED and err.value.cmd == Cmd.INFER
    # a chunk longer than the rest of the weight image is refused from its header
    with pytest.raises(DeviceError, match="BAD_LENGTH"):
        dev.request(Cmd.LOAD_DATA, bytes(net["acc"].load_bytes + 1))
    assert dev.counters().images == 0
    dev.load_weights(net["acc"].weight_image(), chunk=72)
    check_image(dev, net, 0)


def test_damaged_infer_is_discarded_and_does_not_leak(net: dict, loaded) -> None:
    dev, _ = loaded
    info = dev.info()
    seq = dev.next_seq()
    frame = bytearray(encode_frame(seq, Cmd.INFER, encode_codes(net["x_ir"][5], info)))
    frame[5 + 9] ^= 0x10  # one payload bit: the codes reach the accelerator, the CRC fails
    dev.send_frame(bytes(frame))
    answer = dev.receive(seq, Cmd.INFER)
    assert answer.is_error and answer.error == ErrorCode.BAD_CRC
    c = dev.counters()
    assert (c.crc_errors, c.images) == (1, 1)  # the image ran to the end, its result dropped
    check_image(dev, net, 1)
    check_image(dev, net, 2)


def test_truncated_infer_is_completed_with_zeros_and_answered_timeout(net: dict,
                                                                       loaded) -> None:
    dev, tr = loaded
    info = dev.info()
    seq = dev.next_seq()
    frame = encode_frame(seq, Cmd.INFER, encode_codes(net["x_ir"][4], info))
    dev.send_frame(frame[: 5 + info.image_bytes // 2 + 1])  # an odd count: half a beat too
    start = tr.cycle
    answer = dev.receive(seq, Cmd.INFER)
    assert answer.is_error and answer.error == ErrorCode.TIMEOUT
    sent_cycles = (5 + info.image_bytes // 2 + 1) * 10 * DIVISOR
    assert tr.cycle - start >= sent_cycles + TIMEOUT_CYCLES  # not before the timeout
    c = dev.counters()
    assert (c.timeouts, c.images, c.crc_errors) == (1, 1, 0)
    check_image(dev, net, 3)


def test_repeated_frame_gets_the_stored_response_without_running_again(net: dict,
                                                                       loaded) -> None:
    dev, _ = loaded
    info = dev.info()
    seq = dev.next_seq()
    frame = encode_frame(seq, Cmd.INFER, encode_codes(net["x_ir"][1], info))
    dev.send_frame(frame)
    first = dev.receive(seq, Cmd.INFER)
    dev.send_frame(frame)  # the host missed the response: the same frame, the same seq
    again = dev.receive(seq, Cmd.INFER)
    assert again == first and not first.is_error
    c = dev.counters()
    # INFO, LOAD_BEGIN, two LOAD_DATA, INFER twice, COUNTERS: the repeat is a good frame,
    # not an image
    assert c.images == 1 and c.frames_ok == 7
    # a frame with a new seq is new, even with the same payload
    seq = dev.next_seq()
    dev.send_frame(encode_frame(seq, Cmd.INFER, encode_codes(net["x_ir"][1], info)))
    assert dev.receive(seq, Cmd.INFER).payload == first.payload
    assert dev.counters().images == 2
    check_image(dev, net, 2)


def test_driver_retries_a_damaged_response_with_the_same_seq(net: dict) -> None:
    class Noisy(SimTransport):
        """Flips one bit of the response bytes once, when armed."""

        armed = -1

        def read(self, n: int, timeout: float) -> bytes:
            data = bytearray(super().read(n, timeout))
            if 0 <= self.armed < len(data):
                data[self.armed] ^= 0x04
                self.armed = -1
            elif self.armed >= 0:
                self.armed -= len(data)
            return bytes(data)

    dev, tr = open_device(net["acc"], transport=Noisy)
    dev.load_weights(net["acc"].weight_image(), chunk=72)
    tr.armed = 9  # a payload byte of the next response
    check_image(dev, net, 0)
    c = dev.counters()
    assert c.images == 1  # the repeat was answered from the stored response
    assert c.frames_ok == 6  # INFO, LOAD_BEGIN, LOAD_DATA, INFER twice, COUNTERS


def test_damaged_load_chunk_restarts_the_weight_image(net: dict) -> None:
    class Flaky(SimTransport):
        """Flips a payload bit of the n-th frame written."""

        frames = 0
        damage = -1

        def write(self, data: bytes) -> None:
            data = bytearray(data)
            if self.frames == self.damage:
                data[6] ^= 0x80
            self.frames += 1
            super().write(bytes(data))

    dev, tr = open_device(net["acc"], transport=Flaky)
    tr.damage = 3  # INFO, LOAD_BEGIN, LOAD_DATA, the second LOAD_DATA
    dev.load_weights(net["acc"].weight_image(), chunk=24)
    c = dev.counters()
    # the damaged chunk reached the loader: its repeat was refused (NOT_LOADED) and the driver
    # started over from LOAD_BEGIN
    assert c.crc_errors == 1
    # INFO; LOAD_BEGIN and one good chunk; the refused repeat; LOAD_BEGIN and three chunks; this
    assert c.frames_ok == 1 + 2 + 1 + 4 + 1
    check_image(dev, net, 1)


def test_repeated_load_chunk_is_not_loaded_twice(net: dict) -> None:
    dev, _ = open_device(net["acc"])
    image = net["acc"].weight_image()
    dev.request(Cmd.LOAD_BEGIN)
    seq = dev.next_seq()
    chunk = encode_frame(seq, Cmd.LOAD_DATA, image[:30])
    for _ in range(2):
        dev.send_frame(chunk)
        assert dev.receive(seq, Cmd.LOAD_DATA).payload == b""
    dev.request(Cmd.LOAD_DATA, image[30:])
    check_image(dev, net, 3)


def test_unknown_command_and_bad_lengths_are_error_frames(net: dict, loaded) -> None:
    dev, _ = loaded
    for cmd, payload, code in [(0x55, b"", ErrorCode.UNKNOWN_CMD),
                               (Cmd.PING, b"x", ErrorCode.BAD_LENGTH),
                               (Cmd.INFER, bytes(31), ErrorCode.BAD_LENGTH),
                               (Cmd.INFER, bytes(33), ErrorCode.BAD_LENGTH)]:
        response = dev.exchange(cmd, payload)
        assert response.is_error and (response.error, response.error_cmd) == (code, cmd)
    assert dev.counters().images == 0  # no payload of a bad-length INFER reached the pipeline
    check_image(dev, net, 5)


def test_garbage_and_line_errors_between_frames_are_skipped(net: dict, loaded) -> None:
    dev, tr = loaded
    rng = random.Random(5)
    tr.write(bytes(rng.choice([b for b in range(256) if b != 0xA5]) for _ in range(12)))
    tr.write_bits([0] * 14)  # a break: one framing error
    tr.pause(3 * DIVISOR)
    check_image(dev, net, 4)
    c = dev.counters()
    assert c.rx_errors == 1 and c.timeouts == 0 and c.crc_errors == 0


def test_stale_responses_are_skipped(net: dict) -> None:
    """The host stopped reading in the middle of a response; the next request still works."""
    dev, tr = open_device(net["acc"])
    seq = dev.next_seq()
    dev.send_frame(encode_frame(seq, Cmd.PING))
    assert len(tr.read(3, 0.01)) == 3  # read the start of the response, then stop
    assert dev.ping() == 1


def test_silent_device_raises_link_error_after_the_timeout(net: dict) -> None:
    class Deaf(SimTransport):
        def write(self, data: bytes) -> None:  # the cable is cut
            pass

    dev, tr = open_device(net["acc"], transport=Deaf, timeout_s=0.002, retries=1)
    with pytest.raises(LinkError, match=r"PING failed after 2 attempts.*no response"):
        dev.ping()
    assert tr.cycle <= 2 * 2_000 + 2 * 10 * 200 + 10  # bounded: timeouts and settling only


def test_design_without_loadable_weights_needs_no_load(net: dict) -> None:
    acc = Accelerator(net["plan"])
    assert acc.load_bytes == 0
    dev, _ = open_device(acc)
    assert dev.info().load_bytes == 0
    check_image(dev, net, 2)
    dev.load_weights(b"")
    with pytest.raises(DeviceError, match="BAD_LENGTH"):
        dev.request(Cmd.LOAD_DATA, b"\x01")
    check_image(dev, net, 3)


def test_serial_transport_without_pyserial_names_the_package(monkeypatch) -> None:
    import sys

    from accelgen.host import SerialTransport

    monkeypatch.setitem(sys.modules, "serial", None)  # `import serial` raises ImportError
    with pytest.raises(LinkError, match="pip install pyserial"):
        SerialTransport("/dev/ttyUSB0", 115_200)


# -- the engine alone, no UART: a stalled accelerator, wider formats ------------------------


def test_stalled_accelerator_is_answered_with_timeout_not_a_hang(net: dict) -> None:
    acc = net["acc"]
    link = HostLink(acc, clock_hz=CLOCK_HZ, timeout_cycles=100, stall_cycles=300)
    info = link.info
    request = encode_frame(3, Cmd.INFER, encode_codes(net["x_ir"][0], info))
    ping = encode_frame(4, Cmd.PING)
    out = bytearray()
    status: list[int] = []

    async def host(ctx) -> None:
        ctx.set(link.loaded, 1)
        for byte in request + ping:
            ctx.set(link.rx.payload, byte)
            ctx.set(link.rx.valid, 1)
            await ctx.tick().until(link.rx.ready)
            ctx.set(link.rx.valid, 0)
            for _ in range(3):
                await ctx.tick()
        ctx.set(link.rx.valid, 0)

    async def sink(ctx) -> None:
        ctx.set(link.tx.ready, 1)
        for _ in range(5_000):
            _, _, valid, byte = await ctx.tick().sample(link.tx.valid, link.tx.payload)
            if valid:
                out.append(int(byte))
        status.append(ctx.get(link.status.fault))

    sim = Simulator(link)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_testbench(sink)
    sim.run()
    frames = FrameDecoder().feed(bytes(out))
    assert [(f.seq, f.cmd, f.payload) for f in frames] == [
        (3, 0xFF, bytes([ErrorCode.TIMEOUT, Cmd.INFER])),
        (4, Cmd.PING | 0x80, PING_PAYLOAD),
    ]
    assert status == [1]


class FakeAcc:
    """What `HostLink` reads from an accelerator, for formats the small network lacks:
    12-bit signed codes in 3 lanes (two bytes per code), 16-bit signed logits in 2 lanes."""

    def __init__(self) -> None:
        from accelgen.cores.streams import Format

        self.in_fmt = Format(2, 3, 3, 12, True, 3)
        self.out_fmt = Format(1, 1, 6, 16, True, 2)
        self.cls_bits = 3
        self.load_bytes = 5


def fake_logits(codes: list[int]) -> list[int]:
    s = sum(codes)
    return [((s * (k + 3) - 9000 * k + 32768) % 65536) - 32768 for k in range(6)]


def test_engine_packs_wide_codes_and_unpacks_wide_logits() -> None:
    fake = FakeAcc()
    link = HostLink(fake, clock_hz=CLOCK_HZ, timeout_cycles=400, stall_cycles=2_000)
    info = link.info
    assert (info.bytes_per_code, info.bytes_per_logit, info.logits) == (2, 2, 6)
    rng = np.random.default_rng(9)
    images = [rng.integers(-2048, 2048, size=(2, 3, 3)) for _ in range(2)]
    weights = bytes([9, 8, 7, 6, 5])
    seen: dict[str, list] = {"codes": [], "load": [], "restarts": []}
    out = bytearray()
    answers: list = []

    async def accelerator(ctx) -> None:
        prng = random.Random(1)
        n = 0
        while True:
            codes: list[int] = []
            ctx.set(link.acc_i.ready, 1)
            while True:
                ctx.set(link.acc_i.ready, int(prng.random() < 0.6))
                _, _, valid, ready, beat = await ctx.tick().sample(
                    link.acc_i.valid, link.acc_i.ready, link.acc_i.payload)
                if valid and ready:
                    codes += [int(v) for v in beat.data]
                    if beat.last:
                        break
            ctx.set(link.acc_i.ready, 0)
            seen["codes"].append(codes)
            logits = fake_logits(codes)
            for _ in range(7):
                await ctx.tick()
            for b in range(3):
                ctx.set(link.acc_o.payload, {"data": logits[2 * b : 2 * b + 2],
                                             "last": int(b == 2)})
                ctx.set(link.acc_o.valid, 1)
                await ctx.tick().until(link.acc_o.ready)
            ctx.set(link.acc_o.valid, 0)
            n += 1
            ctx.set(link.acc_latency, 1000 + n)
            ctx.set(link.acc_images, n)
            ctx.set(link.acc_cls.payload, int(np.argmax(logits)))
            ctx.set(link.acc_cls.valid, 1)
            await ctx.tick().until(link.acc_cls.ready)
            ctx.set(link.acc_cls.valid, 0)

    async def loader(ctx) -> None:
        while True:
            _, _, valid, byte, restart = await ctx.tick().sample(
                link.load.valid, link.load.payload, link.load_restart)
            if restart:
                seen["restarts"].append(len(seen["load"]))
            if valid:
                seen["load"].append(int(byte))
            ctx.set(link.loaded, int(len(seen["load"]) >= 5))

    async def sink(ctx) -> None:
        busy = random.Random(3)
        while True:
            ctx.set(link.tx.ready, int(busy.random() < 0.5))
            _, _, valid, ready, byte = await ctx.tick().sample(link.tx.valid, link.tx.ready,
                                                               link.tx.payload)
            if valid and ready:
                out.append(int(byte))

    async def host(ctx) -> None:
        gaps = random.Random(2)
        dec = FrameDecoder()
        for seq, (cmd, payload) in enumerate([
                (Cmd.LOAD_BEGIN, b""), (Cmd.LOAD_DATA, weights[:2]),
                (Cmd.LOAD_DATA, weights[2:]), (Cmd.INFER, encode_codes(images[0], info)),
                (Cmd.INFER, encode_codes(images[1], info)), (Cmd.INFO, b"")]):
            for byte in encode_frame(seq, cmd, payload):
                ctx.set(link.rx.payload, byte)
                ctx.set(link.rx.valid, 1)
                await ctx.tick().until(link.rx.ready)
                ctx.set(link.rx.valid, 0)
                for _ in range(gaps.randrange(3)):
                    await ctx.tick()
            for _ in range(3_000):
                await ctx.tick()
                got = dec.feed(bytes(out))
                out.clear()
                if got:
                    answers.extend(got)
                    break

    sim = Simulator(link)
    sim.add_clock(1e-6)
    sim.add_testbench(accelerator, background=True)
    sim.add_testbench(loader, background=True)
    sim.add_testbench(sink, background=True)
    sim.add_testbench(host)
    sim.run()
    assert [a.cmd for a in answers] == [0x90, 0x91, 0x91, 0xA0, 0xA0, 0x82]
    assert seen["load"] == list(weights) and seen["restarts"] == [0]
    for k, image in enumerate(images):
        assert seen["codes"][k] == image.reshape(-1).tolist()
        cls, logits, cycles = decode_infer(answers[3 + k].payload, info)
        assert logits.tolist() == fake_logits(image.reshape(-1).tolist())
        assert (cls, cycles) == (int(np.argmax(logits)), 1001 + k)
    assert DeviceInfo.unpack(answers[5].payload) == info
