// accelgen's Verilator driver for the PE array (`accelgen.cores.pe_array.ArrayCore`).
//
// Compiled with the Verilator model of the array (top module `top`, class `Vtop`) into one
// shared library that Python loads with ctypes. `ag_array_run` runs a batch: for each image it
// writes the input words through the array's external memory port, starts the program, clocks
// until `busy` falls, reads the output words back, the counters (cycles, reads, writes) and
// the per-layer counters (`layer_words` words of the counter memory).

#include <cstdint>

#include "Vtop.h"
#include "verilated.h"

namespace {

struct Sim {
  VerilatedContext ctx;
  Vtop top{&ctx, "top"};
  uint64_t cycle = 0;

  void tick() {
    top.clk = 1;
    top.eval();
    top.clk = 0;
    top.eval();
    cycle++;
  }
};

}  // namespace

extern "C" {

void *ag_array_new() {
  auto *s = new Sim;
  s->top.clk = 0;
  s->top.rst = 1;
  s->top.eval();
  s->tick();
  s->top.rst = 0;
  s->top.eval();
  return s;
}

void ag_array_free(void *p) { delete static_cast<Sim *>(p); }

// returns 0, or 1 when an image did not finish within `max_cycles`
// writes `words` words of `image` from address 0 (the program, weights, parameters)
void ag_array_load(void *p, const uint16_t *image, uint32_t words) {
  Sim &s = *static_cast<Sim *>(p);
  s.top.ext_we = 1;
  for (uint32_t i = 0; i < words; i++) {
    s.top.ext_addr = i;
    s.top.ext_wdata = image[i];
    s.tick();
  }
  s.top.ext_we = 0;
}

int ag_array_run(void *p, uint32_t n, const uint16_t *inputs, uint32_t in_addr,
                 uint32_t in_words, uint32_t out_addr, uint32_t out_words, uint16_t *outputs,
                 uint32_t *counters, uint32_t layer_words, uint16_t *layer_counters,
                 uint64_t max_cycles, uint64_t *sim_cycles, uint32_t mem_latency) {
  Sim &s = *static_cast<Sim *>(p);
  Vtop &t = s.top;
  for (uint32_t k = 0; k < n; k++) {
    t.ext_we = 1;
    for (uint32_t i = 0; i < in_words; i++) {
      t.ext_addr = in_addr + i;
      t.ext_wdata = inputs[uint64_t(k) * in_words + i];
      s.tick();
    }
    t.ext_we = 0;
    t.start = 1;
    s.tick();
    t.start = 0;
    uint64_t c = 0;
    while (t.busy) {
      s.tick();
      if (++c > max_cycles) return 1;
    }
    for (uint32_t i = 0; i < out_words; i++) {
      t.ext_addr = out_addr + i;
      for (uint32_t c = 0; c < mem_latency; c++) s.tick();  // the word's read latency
      outputs[uint64_t(k) * out_words + i] = uint16_t(t.ext_rdata);
    }
    counters[3 * k + 0] = t.cycles;
    counters[3 * k + 1] = t.reads;
    counters[3 * k + 2] = t.writes;
    for (uint32_t i = 0; i < layer_words; i++) {
      t.cnt_addr = (i / 6) * 8 + i % 6;  // counter_address(i): 6 words a layer, stride 8
      s.tick();
      layer_counters[uint64_t(k) * layer_words + i] = uint16_t(t.cnt_rdata);
    }
  }
  *sim_cycles = s.cycle;
  return 0;
}

}  // extern "C"
