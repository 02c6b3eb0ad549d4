// accelgen's CXXRTL driver: streams images through a compiled accelerator in-process.
//
// Compiled together with the model Yosys writes (`write_cxxrtl -header`, top module `top`,
// the flat ports of `accelgen.sim.cxxrtl.SimTop`) into one shared library that Python loads
// with ctypes. One call of `ag_run` loads the run-time weights, streams every image and
// collects every output beat (`driver_loop.h`).

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <type_traits>
#include <vector>

#include <cxxrtl/cxxrtl.h>
#include <cxxrtl/cxxrtl_vcd.h>

#include "driver_loop.h"
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

  void ivalid(bool b) { set_bit(top.p_ivalid, b); }
  void oready(bool b) { set_bit(top.p_oready, b); }
  void cready(bool b) { set_bit(top.p_cready, b); }
  void lvalid(bool b) { set_bit(top.p_lvalid, b); }
  void ldata(uint32_t x) { set_word(top.p_ldata, x); }
  void idata(const uint32_t *w) { put(top.p_idata, w); }
  bool iready() const { return bit(top.p_iready); }
  bool ovalid() const { return bit(top.p_ovalid); }
  bool cvalid() const { return bit(top.p_cvalid); }
  bool loaded() const { return bit(top.p_loaded); }
  void odata(uint32_t *w) const { get(top.p_odata, w); }
  uint64_t cdata() const { return word64(top.p_cdata); }
  uint64_t latency() const { return word64(top.p_latency); }

  // `edge()`'s step also settles the logic on the new register values (the clock is put low
  // directly, not by a step of its own). (Skipping the settle when no input changed gave
  // wrong results on the iCE40 plans.)
  void settle() { top.step(); }
  void edge() {
    rise(top);
    top.step();
    if (recording) vcd->sample(cycle);
    cycle++;
  }
  void flush_vcd() {
    if (!vcd) return;
    vcd_file << vcd->buffer;
    vcd->buffer.clear();
    vcd_file.flush();
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
  s->flush_vcd();
  delete s->vcd;
  delete s;
}

// `accelgen::run`'s arguments (driver_loop.h), and `vcd_path`: a VCD of image `vcd_image`'s
// cycles (-1: all) is written there (return code 4 when it cannot be).
int ag_run(void *h, const uint8_t *load, uint64_t n_load, const uint32_t *in, uint64_t n_in,
           uint32_t in_last_bit, uint64_t n_images, int back_to_back, uint32_t *out,
           uint64_t out_cap, uint32_t out_last_bit, uint32_t *classes, uint64_t *in_start,
           uint64_t *out_end, uint64_t deadline, uint64_t seed, double idle, double busy,
           const char *vcd_path, int64_t vcd_image, uint64_t *stats,
           const volatile int32_t *cancel) {
  Sim &s = *static_cast<Sim *>(h);
  if (vcd_path && vcd_path[0]) {
    s.vcd_file.open(vcd_path);
    if (!s.vcd_file) return 4;
    s.top.debug_info(&s.items, nullptr, "");
    s.vcd = new cxxrtl::vcd_writer();
    s.vcd->timescale(1, "us");
    s.vcd->add_without_memories(s.items);
  }
  return accelgen::run(s, IN_CHUNKS, OUT_CHUNKS, load, n_load, in, n_in, in_last_bit,
                       n_images, back_to_back, out, out_cap, out_last_bit, classes, in_start,
                       out_end, deadline, seed, idle, busy, vcd_image, stats, cancel);
}

}  // extern "C"
