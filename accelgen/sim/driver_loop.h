// accelgen's simulation driver loop, shared by the compiled backends (CXXRTL and Verilator).
//
// Each backend's driver (`cxxrtl_driver.cc`, `verilator_driver.cc`) wraps its compiled model
// in a `Sim` with the flat ports of `accelgen.sim.cxxrtl.SimTop` as methods:
//   inputs   ivalid(bool) oready(bool) cready(bool) lvalid(bool) ldata(uint32) idata(words)
//   outputs  iready() ovalid() cvalid() loaded() odata(words) cdata() latency()
//   time     settle(): the logic sees the inputs set for this cycle (the driver then reads
//            ready and valid); edge(): a rising clock edge after which the logic is settled
//            on the new register values; `cycle`: the edges so far
//   waves    `vcd` (a waveform is being written), `recording`, flush_vcd()
// and `run` streams the weight bytes and every image through it, so no Python runs per cycle.
//
// The cycle accounting is `accelgen.sim.pysim`'s: `cycle` counts clock edges; an input beat
// is presented from the cycle it is set and moves at the first edge where `iready` is high;
// an image's start is the cycle its first beat is first presented and its end is the number
// of the edge that moved its last output beat. Without backpressure every backend gives the
// same cycles for every image (tests/test_cxxrtl.py, tests/test_verilator.py).

#pragma once

#include <cstdint>

namespace accelgen {

// xorshift64*: the seeded random backpressure (not Python's sequence; same statistics)
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 2654435761u + 0x9e3779b97f4a7c15ull) {
    if (!s) s = 1;
  }
  double next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return double((s * 2685821657736338717ull) >> 11) / double(1ull << 53);
  }
};

// Return codes: 0 done; 1 no progress within `deadline` cycles; 2 the loader took the weight
// image but does not say `loaded`; 3 more output beats than `out_cap`; 5 cancelled.
//
// `in`: `n_in` input beats of `in_chunks` words (the packed payload, `in_last_bit` its last
// flag); `out`: room for `out_cap` output beats of `out_chunks` words. Per image: `in_start`,
// `out_end` (cycles), `classes`. `stats`: total cycles, the latency counter after the last
// image, output beats, classes, the cycle the loading ended. `cancel`: the run stops (code 5)
// within 4,096 cycles of another thread setting it.
template <class Sim>
int run(Sim &s, uint32_t in_chunks, uint32_t out_chunks, const uint8_t *load, uint64_t n_load,
        const uint32_t *in, uint64_t n_in, uint32_t in_last_bit, uint64_t n_images,
        int back_to_back, uint32_t *out, uint64_t out_cap, uint32_t out_last_bit,
        uint32_t *classes, uint64_t *in_start, uint64_t *out_end, uint64_t deadline,
        uint64_t seed, double idle, double busy, int64_t vcd_image, uint64_t *stats,
        const volatile int32_t *cancel) {
  Rng rng_in(seed), rng_out(seed + 1);
  // the run-time weights, a byte per cycle, then one cycle for the loader's last write
  s.cready(true);
  for (uint64_t k = 0; k < n_load; k++) {
    s.ldata(load[k]);
    s.lvalid(true);
    s.settle();
    s.edge();
  }
  s.lvalid(false);
  if (n_load) {  // `loaded` follows the last write (here one cycle later than in pysim)
    for (int extra = 0; extra < 8 && (extra == 0 || !s.loaded()); extra++) {
      s.settle();
      s.edge();
    }
    if (!s.loaded()) return 2;
  }
  stats[4] = s.cycle;

  const uint32_t in_last_word = in_last_bit / 32, in_last_mask = 1u << (in_last_bit % 32);
  const uint32_t out_last_word = out_last_bit / 32, out_last_mask = 1u << (out_last_bit % 32);
  uint64_t beat = 0, img_in = 0, img_out = 0, n_out = 0, n_cls = 0;
  bool presenting = false, first_of_image = true;
  uint64_t last_progress = s.cycle;
  while (img_out < n_images || n_cls < n_images) {
    if (s.vcd)  // from the chosen image's first input beat to its last output beat
      s.recording = vcd_image < 0 || (int64_t(img_out) <= vcd_image &&
                                      (int64_t(img_in) > vcd_image ||
                                       (int64_t(img_in) == vcd_image && !first_of_image)));
    if (!presenting && beat < n_in) {
      // (one at a time: the next image starts the cycle after the previous one's end, as in
      // the Python testbench)
      bool allowed = back_to_back || !first_of_image || img_in == 0 ||
                     (img_out >= img_in && s.cycle > out_end[img_in - 1]);
      if (allowed && !(idle > 0 && rng_in.next() < idle)) {
        s.idata(in + beat * in_chunks);
        presenting = true;
        if (first_of_image) {
          in_start[img_in] = s.cycle;
          first_of_image = false;
        }
      }
    }
    bool oready = !(busy > 0 && rng_out.next() < busy);
    s.ivalid(presenting);
    s.oready(oready);
    s.settle();
    bool itake = presenting && s.iready();
    bool otake = oready && s.ovalid();
    bool ctake = s.cvalid();
    if (otake) {
      if (n_out >= out_cap) return 3;
      uint32_t *o = out + n_out * out_chunks;
      s.odata(o);
      n_out++;
      if (o[out_last_word] & out_last_mask) {
        if (img_out < n_images) out_end[img_out] = s.cycle + 1;
        img_out++;
      }
    }
    if (ctake && n_cls < n_images) classes[n_cls++] = uint32_t(s.cdata());
    s.edge();
    if (itake) {
      bool last = in[beat * in_chunks + in_last_word] & in_last_mask;
      presenting = false;
      beat++;
      first_of_image = last;
      if (last) img_in++;
    }
    if (itake || otake || ctake) last_progress = s.cycle;
    if ((s.cycle & 4095) == 0 && cancel && *cancel) {
      stats[0] = s.cycle;
      return 5;
    }
    if (s.cycle - last_progress > deadline) {
      stats[0] = s.cycle;
      stats[2] = n_out;
      stats[3] = n_cls;
      return 1;
    }
  }
  s.settle();
  stats[0] = s.cycle;
  stats[1] = s.latency();
  stats[2] = n_out;
  stats[3] = n_cls;
  s.flush_vcd();
  return 0;
}

}  // namespace accelgen
