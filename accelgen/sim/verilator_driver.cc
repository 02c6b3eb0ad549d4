// accelgen's Verilator driver: streams images through a verilated accelerator in-process.
//
// Compiled together with the model Verilator writes from the design's Verilog (top module
// `top`, class `Vtop`, the flat ports of `accelgen.sim.cxxrtl.SimTop`) into one shared library
// that Python loads with ctypes. One call of `ag_run` loads the run-time weights, streams every
// image and collects every output beat (`driver_loop.h`). No waveforms: tracing slows the
// model down, and the CXXRTL backend writes them.

#include <cstdint>
#include <type_traits>

#include "Vtop.h"
#include "Vtop___024root.h"
#include "driver_loop.h"
#include "verilated.h"

namespace {

// Verilator's port types: CData/SData/IData (up to 32 bits), QData (64), VlWide<N> (N words)
template <class T> struct chunks_of {
  static constexpr size_t n = sizeof(T) > 4 ? 2 : 1;
};
template <size_t N> struct chunks_of<VlWide<N>> { static constexpr size_t n = N; };

template <class T> void put(T &v, const uint32_t *w) {
  if constexpr (std::is_integral_v<T>) {
    if constexpr (sizeof(T) > 4)
      v = T(w[0]) | (T(w[1]) << 32);
    else
      v = T(w[0]);
  } else {
    for (size_t i = 0; i < chunks_of<T>::n; i++) v[i] = w[i];
  }
}
template <class T> void get(const T &v, uint32_t *w) {
  if constexpr (std::is_integral_v<T>) {
    w[0] = uint32_t(v);
    if constexpr (sizeof(T) > 4) w[1] = uint32_t(uint64_t(v) >> 32);
  } else {
    for (size_t i = 0; i < chunks_of<T>::n; i++) w[i] = v[i];
  }
}
template <class T> uint64_t word64(const T &v) {
  if constexpr (std::is_integral_v<T>)
    return uint64_t(v);
  else
    return uint64_t(v[0]) | (uint64_t(v[1]) << 32);
}

constexpr size_t IN_CHUNKS = chunks_of<std::remove_reference_t<decltype(Vtop::idata)>>::n;
constexpr size_t OUT_CHUNKS = chunks_of<std::remove_reference_t<decltype(Vtop::odata)>>::n;

struct Sim {
  VerilatedContext ctx;
  Vtop top{&ctx, "top"};
  uint64_t cycle = 0;
  bool vcd = false;
  bool recording = false;

  bool dirty = true;  // an input changed since the last evaluation

  template <class P, class V> void set(P &port, V v) {
    if (port != P(v)) {
      port = P(v);
      dirty = true;
    }
  }
  void ivalid(bool b) { set(top.ivalid, b); }
  void oready(bool b) { set(top.oready, b); }
  void cready(bool b) { set(top.cready, b); }
  void lvalid(bool b) { set(top.lvalid, b); }
  void ldata(uint32_t x) { set(top.ldata, x); }
  void idata(const uint32_t *w) {
    put(top.idata, w);
    dirty = true;
  }
  bool iready() const { return top.iready; }
  bool ovalid() const { return top.ovalid; }
  bool cvalid() const { return top.cvalid; }
  bool loaded() const { return top.loaded; }
  void odata(uint32_t *w) const { get(top.odata, w); }
  uint64_t cdata() const { return word64(top.cdata); }
  uint64_t latency() const { return word64(top.latency); }

  // The rising edge's evaluation also settles the logic on the new register values. Verilator
  // evaluates every combinational process that reads an input on every `eval()`, so `settle()`
  // evaluates only when an input changed (in a streaming run most cycles change none: this
  // halves the evaluations). That needs the clock's fall without an evaluation of its own:
  // Verilator detects the rising edge against the clock it saw last, which the build names in
  // AG_CLK_PREV (found in the generated header; without it every settle evaluates, with the
  // clock low).
  void settle() {
#ifdef AG_CLK_PREV
    if (!dirty) return;
#endif
    top.eval();
    dirty = false;
  }
  void edge() {
#ifdef AG_CLK_PREV
    top.rootp->AG_CLK_PREV = 0;
#endif
    top.clk = 1;
    top.eval();
    top.clk = 0;
    dirty = false;
    cycle++;
  }
  void flush_vcd() {}
};

}  // namespace

extern "C" {

uint32_t ag_in_chunks() { return IN_CHUNKS; }
uint32_t ag_out_chunks() { return OUT_CHUNKS; }

void *ag_new() {
  Sim *s = new Sim();
  s->top.clk = 0;
  s->top.eval();
  return s;
}

void ag_free(void *h) {
  Sim *s = static_cast<Sim *>(h);
  s->top.final();
  delete s;
}

// `accelgen::run`'s arguments (driver_loop.h); `vcd_path` must be empty (return code 4
// otherwise: this backend writes no waveforms).
int ag_run(void *h, const uint8_t *load, uint64_t n_load, const uint32_t *in, uint64_t n_in,
           uint32_t in_last_bit, uint64_t n_images, int back_to_back, uint32_t *out,
           uint64_t out_cap, uint32_t out_last_bit, uint32_t *classes, uint64_t *in_start,
           uint64_t *out_end, uint64_t deadline, uint64_t seed, double idle, double busy,
           const char *vcd_path, int64_t vcd_image, uint64_t *stats,
           const volatile int32_t *cancel) {
  if (vcd_path && vcd_path[0]) return 4;
  Sim &s = *static_cast<Sim *>(h);
  return accelgen::run(s, IN_CHUNKS, OUT_CHUNKS, load, n_load, in, n_in, in_last_bit,
                       n_images, back_to_back, out, out_cap, out_last_bit, classes, in_start,
                       out_end, deadline, seed, idle, busy, vcd_image, stats, cancel);
}

}  // extern "C"
