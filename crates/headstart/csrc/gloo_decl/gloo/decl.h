// Declarations only: the Gloo names that libtorch's ProcessGroupGloo.hpp mentions, so that the
// distributed shim compiles against the torch headers of the venv (whose wheel ships no Gloo
// headers). The shim holds Gloo objects only behind smart pointers made and used inside
// libtorch, never by value, so nothing here describes a layout that code in the shim relies
// on; `dist_shim.cpp` checks the one size that matters (ProcessGroupGloo) at compile time.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace gloo {

// ProcessGroupGloo::setTimeout, inline in the torch header, calls this; the shim never does
// (ProcessGroupGloo's vtable and that function are emitted in libtorch, not here).
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};

namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport

namespace rendezvous {

// Only the virtual functions that ProcessGroupGloo::GlooStore overrides. The shim never
// constructs a GlooStore (libtorch does, with its own definition), so this class's vtable is
// never emitted here.
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) = 0;
};

} // namespace rendezvous
} // namespace gloo
