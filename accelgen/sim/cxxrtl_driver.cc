// accelgen's CXXRTL driver: streams images through a compiled accelerator in-process.
//
// Compiled together with the model Yosys writes (`write_cxxrtl -header`, top module `top`,
// the flat ports of `accelgen.sim.cxxrtl.SimTop`) into one shared library that Python loads
// with ctypes. One call of `ag_run` loads the run-time weights, streams every image and
// collects every output beat, so no Python runs per cycle.
//
// The cycle accounting is `accelgen.sim.pysim`'s: `cycle` counts clock edges; an input beat
// is presented from the cycle it is set and moves at the first edge where `iready` is high;
// an image's start is the cycle its first beat is first presented and its end is the number
// of the edge that moved its last output beat. Without backpressure both simulators give the
// same cycles for every image (tests/test_cxxrtl.py).

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <type_traits>
#include <vector>

#include <cxxrtl/cxxrtl.h>
#include <cxxrtl/cxxrtl_vcd.h>

#include "model.h"

namespace {

using cxxrtl::value;
using cxxrtl::wire;

template <size_t N> void put(value<N> &v, const uint32_t *w) {
  for (size_t i = 0; i < value<N>::chunks; i++) v.data[i] = w[i];
}
template <size_t N> void put(wire<N> &v, const uint32_t *w) { put(v.next, w); }
template <size_t N> void get(const value<N> &v, uint32_t *w) {
  for (size_t i = 0; i < value<N>::chunks; i++) w[i] = v.data[i];
}
template <size_t N> void get(const wire<N> &v, uint32_t *w) { get(v.curr, w); }
template <size_t N> bool bit(const value<N> &v) { return v.data[0] & 1; }
template <size_t N> bool bit(const wire<N> &v) { return v.curr.data[0] & 1; }
template <size_t N> void set_bit(value<N> &v, bool b) { v.data[0] = b; }
template <size_t N> void set_bit(wire<N> &v, bool b) { v.next.data[0] = b; }
template <size_t N> void set_word(value<N> &v, uint32_t x) { v.data[0] = x; }
template <size_t N> void set_word(wire<N> &v, uint32_t x) { v.next.data[0] = x; }
template <size_t N> uint64_t word64(const value<N> &v) {
  uint64_t r = v.data[0];
  if (value<N>::chunks > 1) r |= uint64_t(v.data[1]) << 32;
  return r;
}
template <size_t N> uint64_t word64(const wire<N> &v) { return word64(v.curr); }

template <class T> struct chunks_of;
template <size_t N> struct chunks_of<value<N>> { static constexpr size_t n = value<N>::chunks; };
template <size_t N> struct chunks_of<wire<N>> { static constexpr size_t n = value<N>::chunks; };

using Top = cxxrtl_design::p_top;
constexpr size_t IN_CHUNKS = chunks_of<decltype(Top::p_idata)>::n;
constexpr size_t OUT_CHUNKS = chunks_of<decltype(Top::p_odata)>::n;

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

template <class T> struct is_wire : std::false_type {};
template <size_t N> struct is_wire<wire<N>> : std::true_type {};

// the clock low before this step and high in it (an input clock is a value with its previous
// sample beside it; a clock the design also uses as data is a wire)
template <class T> void rise(T &top) {
  if constexpr (is_wire<decltype(top.p_clk)>::value) {
    top.p_clk.curr.data[0] = 0;
    top.p_clk.next.data[0] = 1;
  } else {
    top.prev_p_clk.data[0] = 0;
    top.p_clk.data[0] = 1;
  }
}

struct Sim {
  Top top;
  uint64_t cycle = 0;
  cxxrtl::debug_items items;
  cxxrtl::vcd_writer *vcd = nullptr;
  std::ofstream vcd_file;
  bool recording = false;

  // A cycle: `settle()` (the logic sees the inputs set for this cycle; the driver then reads
  // ready and valid) and `edge()`, a rising clock edge whose step also settles the logic on
  // the new register values (the clock is put low directly, not by a step of its own).
  // (Skipping the settle when no input changed gave wrong results on the iCE40 plans.)
  void settle() { top.step(); }
  void edge() {
    rise(top);
    top.step();
    if (recording) vcd->sample(cycle);
    cycle++;
  }
};

}  // namespace

extern "C" {

uint32_t ag_in_chunks() { return IN_CHUNKS; }
uint32_t ag_out_chunks() { return OUT_CHUNKS; }

void *ag_new() {
  Sim *s = new Sim();
  set_bit(s->top.p_clk, false);
  s->top.step();
  return s;
}

void ag_free(void *h) {
  Sim *s = static_cast<Sim *>(h);
  if (s->vcd) {
    s->vcd_file << s->vcd->buffer;
    delete s->vcd;
  }
  delete s;
}

// Return codes: 0 done; 1 no progress within `deadline` cycles; 2 the loader took the weight
// image but does not say `loaded`; 3 more output beats than `out_cap`; 4 the VCD file could
// not be written; 5 cancelled.
//
// `in`: `n_in` input beats of IN_CHUNKS words (the packed payload, `in_last_bit` its last
// flag); `out`: room for `out_cap` output beats of OUT_CHUNKS words. Per image: `in_start`,
// `out_end` (cycles), `classes`. `stats`: total cycles, the latency counter after the last
// image, output beats, classes, the cycle the loading ended. `cancel`: the run stops (code 5)
// within 4,096 cycles of another thread setting it.
int ag_run(void *h, const uint8_t *load, uint64_t n_load, const uint32_t *in, uint64_t n_in,
           uint32_t in_last_bit, uint64_t n_images, int back_to_back, uint32_t *out,
           uint64_t out_cap, uint32_t out_last_bit, uint32_t *classes, uint64_t *in_start,
           uint64_t *out_end, uint64_t deadline, uint64_t seed, double idle, double busy,
           const char *vcd_path, int64_t vcd_image, uint64_t *stats,
           const volatile int32_t *cancel) {
  Sim &s = *static_cast<Sim *>(h);
  Top &t = s.top;
  if (vcd_path && vcd_path[0]) {
    s.vcd_file.open(vcd_path);
    if (!s.vcd_file) return 4;
    t.debug_info(&s.items, nullptr, "");
    s.vcd = new cxxrtl::vcd_writer();
    s.vcd->timescale(1, "us");
    s.vcd->add_without_memories(s.items);
  }
  Rng rng_in(seed), rng_out(seed + 1);
  // the run-time weights, a byte per cycle, then one cycle for the loader's last write
  set_bit(t.p_cready, true);
  for (uint64_t k = 0; k < n_load; k++) {
    set_word(t.p_ldata, load[k]);
    set_bit(t.p_lvalid, true);
    s.settle();
    s.edge();
  }
  set_bit(t.p_lvalid, false);
  if (n_load) {  // `loaded` follows the last write (here one cycle later than in pysim)
    for (int extra = 0; extra < 8 && (extra == 0 || !bit(t.p_loaded)); extra++) {
      s.settle();
      s.edge();
    }
    if (!bit(t.p_loaded)) return 2;
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
        put(t.p_idata, in + beat * IN_CHUNKS);
        presenting = true;
        if (first_of_image) {
          in_start[img_in] = s.cycle;
          first_of_image = false;
        }
      }
    }
    bool oready = !(busy > 0 && rng_out.next() < busy);
    set_bit(t.p_ivalid, presenting);
    set_bit(t.p_oready, oready);
    s.settle();
    bool itake = presenting && bit(t.p_iready);
    bool otake = oready && bit(t.p_ovalid);
    bool ctake = bit(t.p_cvalid);
    if (otake) {
      if (n_out >= out_cap) return 3;
      uint32_t *o = out + n_out * OUT_CHUNKS;
      get(t.p_odata, o);
      n_out++;
      if (o[out_last_word] & out_last_mask) {
        if (img_out < n_images) out_end[img_out] = s.cycle + 1;
        img_out++;
      }
    }
    if (ctake && n_cls < n_images) classes[n_cls++] = uint32_t(word64(t.p_cdata));
    s.edge();
    if (itake) {
      bool last = in[beat * IN_CHUNKS + in_last_word] & in_last_mask;
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
  stats[1] = word64(t.p_latency);
  stats[2] = n_out;
  stats[3] = n_cls;
  if (s.vcd) {
    s.vcd_file << s.vcd->buffer;
    s.vcd->buffer.clear();
    s.vcd_file.flush();
  }
  return 0;
}

}  // extern "C"
